"""`llm-dispatcher sim`: a vLLM 0.32-compatible simulator (OpenAI API, /metrics, batching, faults)."""

from __future__ import annotations

import argparse
import logging

from vllm_sim.config import SimConfig

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SimConfig()
    g = parser.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug", "trace"])
    g.add_argument("--access-log", action="store_true", help="log every request (slower)")
    g.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 (401 otherwise)")
    g.add_argument("--enable-request-id-headers", action="store_true", help="echo X-Request-Id on responses")
    m = parser.add_argument_group("model")
    m.add_argument("--model", default=d.model, help="model path/name (the 'root' in /v1/models)")
    m.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        metavar="NAME",
        help="names served (default: --model); the first one labels /metrics",
    )
    m.add_argument("--max-model-len", type=int, default=d.max_model_len)
    m.add_argument(
        "--default-output-tokens",
        type=int,
        default=d.default_output_tokens,
        help="without max_tokens, the output length is seeded within [N/2, N]",
    )
    m.add_argument("--embedding-dim", type=int, default=d.embedding_dim)
    m.add_argument("--seed", type=int, default=d.seed)
    e = parser.add_argument_group("engine (continuous batching)")
    e.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs)
    e.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=d.max_num_batched_tokens,
        metavar="N",
        help="tokens per engine step, decodes first, then prompt chunks (chunked prefill); 0: no budget",
    )
    e.add_argument("--kv-cache-tokens", type=int, default=d.kv_cache_tokens)
    e.add_argument("--scheduling-policy", choices=["fcfs", "priority"], default=d.scheduling_policy)
    e.add_argument("--itl-base", type=float, default=d.itl_base, help="seconds per engine step")
    e.add_argument("--itl-per-seq", type=float, default=d.itl_per_seq, help="extra seconds per step per running seq")
    e.add_argument("--prefill-per-token", type=float, default=d.prefill_per_token, help="seconds per prompt token")
    f = parser.add_argument_group("faults")
    f.add_argument("--failure-rate", type=float, default=d.failure_rate)
    f.add_argument("--failure-status", type=int, default=d.failure_status)
    f.add_argument("--stall-before-first-token", type=float, default=d.stall_before_first_token, metavar="S")
    f.add_argument("--drop-mid-stream-rate", type=float, default=d.drop_mid_stream_rate)
    f.add_argument(
        "--startup-delay", type=float, default=d.startup_delay, metavar="S", help="/health answers 503 for S seconds"
    )


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        model=args.model,
        served_model_names=list(args.served_model_name or []),
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        kv_cache_tokens=args.kv_cache_tokens,
        scheduling_policy=args.scheduling_policy,
        itl_base=args.itl_base,
        itl_per_seq=args.itl_per_seq,
        prefill_per_token=args.prefill_per_token,
        default_output_tokens=args.default_output_tokens,
        embedding_dim=args.embedding_dim,
        seed=args.seed,
        failure_rate=args.failure_rate,
        failure_status=args.failure_status,
        stall_before_first_token=args.stall_before_first_token,
        drop_mid_stream_rate=args.drop_mid_stream_rate,
        startup_delay=args.startup_delay,
        enable_request_id_headers=args.enable_request_id_headers,
        api_key=args.api_key,
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from vllm_sim.app import create_app
    from vllm_sim.faults import install_log_filter
    from vllm_sim.server import uvicorn_config

    try:
        config = config_from_args(args)
    except ValueError as exc:
        log.error("invalid simulator settings: %s", exc)
        return 2
    app = create_app(config)
    server = uvicorn.Server(
        uvicorn_config(app, log_level=args.log_level, access_log=args.access_log, host=args.host, port=args.port)
    )

    def exit_() -> None:
        server.should_exit = True

    app.on_exit = exit_
    install_log_filter()
    server.run()
    return 0
