"""`llm-dispatcher dev` (what `make run` starts): a complete local stack in one command.

Processes: a vLLM simulator (unless upstreams are given), one consumer per upstream, and the sender,
all against the RabbitMQ on localhost and a SQLite token database under ./data. Ctrl-C stops them
all, gracefully.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from devstack.processes import ProcessStack
from llm_dispatcher.settings import DEFAULT_DATABASE_URL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=int(os.environ.get("LLMD_PORT", 8080)), help="sender port")
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="MODEL=URL",
        help="a vLLM replica to put behind the dispatcher (repeatable; default: a simulator serving sim-model)",
    )
    parser.add_argument("--sim-port", type=int, default=8000, help="port of the simulator when one is started")
    parser.add_argument("--sim-model", default="sim-model", help="model name the simulator serves")
    parser.add_argument("--consumer-port", type=int, default=9090, help="first consumer's /metrics port")
    parser.add_argument("--metrics-port", type=int, default=9464, help="the sender's /metrics port")


def _terminate(_signum, _frame) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _terminate)  # stop the children on SIGTERM as on Ctrl-C
    env = {**os.environ, "LLMD_LOG_FORMAT": os.environ.get("LLMD_LOG_FORMAT", "text")}
    env.setdefault("LLMD_DATABASE_URL", DEFAULT_DATABASE_URL)
    os.makedirs("data", exist_ok=True)
    upstreams = []
    for item in args.upstream:
        model, sep, url = item.partition("=")
        if not sep or not model or not url:
            raise SystemExit(f"--upstream wants MODEL=URL, got {item!r}")
        upstreams.append((model, url))
    stack = ProcessStack("data", model=args.sim_model, env=env)
    try:
        if not upstreams:
            url = stack.start_sim(
                ["--max-num-seqs", "16", "--itl-base", "0.01", "--itl-per-seq", "0.001"], port=args.sim_port
            )
            upstreams.append((args.sim_model, url))
        models = sorted({m for m, _ in upstreams})
        for i, (model, url) in enumerate(upstreams):
            stack.start_consumer(url, model=model, port=args.consumer_port + i, LLMD_REPLICA_ID=f"{model}-{i}")
        stack.start_sender(port=args.port, metrics_port=args.metrics_port, LLMD_MODELS=json.dumps(models))
        model = models[0]
        base = f"{stack.url}/v1"
        print(
            f"""
llm-dispatcher is running: {base}  (models: {", ".join(models)})
  metrics: {stack.metrics_url}/metrics   consumers: http://127.0.0.1:{args.consumer_port}/metrics

Create a token (in another shell, from this directory):
  export TOKEN=$(.venv/bin/llm-dispatcher tokens create demo-$RANDOM --priority 5 --threshold 50 --quiet)

Then:
  curl -s {base}/chat/completions -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}], "max_tokens": 16}}'

  .venv/bin/python -c 'import os, openai; \\
c = openai.OpenAI(base_url="{base}", api_key=os.environ["TOKEN"]); \\
print(c.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "Hello!"}}]).choices[0].message.content)'

Ctrl-C stops everything.
""",
            flush=True,
        )
        while all(p.poll() is None for p in stack.procs):
            time.sleep(0.5)
        print("a process exited; stopping the stack", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, RuntimeError, TimeoutError) as exc:
        if not isinstance(exc, KeyboardInterrupt):
            print(f"llm-dispatcher dev: {exc}", file=sys.stderr)
            return 1
        return 0
    finally:
        stack.stop(grace_s=35)
