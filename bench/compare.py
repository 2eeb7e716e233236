"""Side by side: direct, llm-dispatcher, LiteLLM proxy and vllm-router in front of ONE upstream.

The upstream is one simulator process in zero-delay mode (`llm-dispatcher sim`, every latency 0),
shared by every arm; the dispatcher is the real processes (sender, one consumer, RabbitMQ). LiteLLM
(one worker, no database, the simulator as an openai-compatible backend) and vllm-router (the Rust
router, round robin over the one simulator) are installed by this script into virtualenvs of their
own under ~/.cache/llm-dispatcher/bench-venvs/, never into the project's. Load: `wrk` (C, one
thread), non-streaming short chat completions (`max_tokens` 4), closed loop at each concurrency;
each round runs every arm once, in turn, and medians of the rounds are reported: req/s, p50/p99,
added p50 over direct, and CPU ms per request by process.

    .venv/bin/python bench/compare.py [--duration 8] [--rounds 3] [--concurrency 1,16] [--json out.json]
    .venv/bin/python bench/compare.py --profile 8            # also py-spy the sender and consumer at c=16
    .venv/bin/python bench/compare.py --streams 100,1000     # streams: sender vs direct instead

`--streams N,...`: N concurrent streaming chat completions of `--stream-tokens` tokens at
`--stream-itl` seconds a token (the simulator's engine step), directly, through the sender and
through vllm-router (unless skipped): CPU per 1,000 relayed events by process, added p99
inter-token gap (all of them, and those once every stream is open), RSS growth of the sender (and of
the router) per open stream; `--stream-ramp S` starts the streams evenly over S seconds instead of at
once. `wrk` comes from
scripts/ensure-wrk.sh (called when missing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from overhead import BODY, broker_pid, wrk

from devstack.net import free_port, wait_http
from devstack.processes import running, tree_cpu

ROOT = Path(__file__).resolve().parent.parent
VENVS = Path.home() / ".cache" / "llm-dispatcher" / "bench-venvs"
# Pinned: what the numbers in docs/benchmarks.md were measured with (LiteLLM 1.107.0 was a compromised release).
PINS = {"litellm": "litellm[proxy]==1.108.7", "vllm-router": "vllm-router==0.1.17", "py-spy": "py-spy==0.4.3"}
EXES = {"litellm": "litellm", "vllm-router": "vllm-router", "py-spy": "py-spy"}
ARMS = ("direct", "llm-dispatcher", "litellm", "vllm-router")

# py-spy frames ("function (file:line)") are put in a bucket by the first of these found in the file path.
BUCKETS = (
    ("AMQP (aio-pika/aiormq/pamqp)", ("aio_pika", "aiormq", "pamqp")),
    ("upstream HTTP client (aiohttp)", ("aiohttp",)),
    ("HTTP server (uvicorn/httptools/h11)", ("uvicorn", "httptools", "h11")),
    ("ASGI framework (starlette/fastapi)", ("starlette", "fastapi")),
    ("usage/DB writes (sqlalchemy/aiosqlite)", ("sqlalchemy", "aiosqlite", "sqlite3")),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("validation (pydantic)", ("pydantic",)),
    ("logging", ("logging/",)),
    ("JSON (json/orjson)", ("json/", "orjson")),
    ("event loop (asyncio/uvloop)", ("asyncio/", "uvloop")),
)


# -- pure helpers (tested in tests/unit/test_bench_compare.py) ------------------------------------
def bucket_of(frame: str) -> str:
    for name, needles in BUCKETS:
        if any(n in frame for n in needles):
            return name
    for own in ("sender/", "consumer/", "llm_dispatcher/"):
        if own in frame:
            return "own code (" + own.rstrip("/") + ")"
    return "other"


def _samples(collapsed: str) -> Iterator[tuple[list[str], int]]:
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f]
        if frames and count.isdigit():
            yield frames, int(count)


def profile_shares(collapsed: str) -> dict[str, dict[str, float]]:
    """From py-spy's raw (collapsed) output, per bucket, in percent of samples: `inclusive` (a frame of
    that bucket anywhere in the stack), `self` (the innermost frame in it) and `attributed` (the
    innermost frame that is neither event loop nor other is in it: the library a sample's time goes to)."""
    total = 0
    incl: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    attr: Counter[str] = Counter()
    for frames, n in _samples(collapsed):
        buckets = [bucket_of(f) for f in frames]
        total += n
        for b in set(buckets):
            incl[b] += n
        leaf[buckets[-1]] += n
        named = [b for b in buckets if b not in ("other", "event loop (asyncio/uvloop)")]
        attr[named[-1] if named else buckets[-1]] += n
    if not total:
        return {}
    names = sorted(set(incl), key=lambda b: -attr[b])
    return {
        b: {"attributed": 100 * attr[b] / total, "inclusive": 100 * incl[b] / total, "self": 100 * leaf[b] / total}
        for b in names
    }


def top_functions(collapsed: str, k: int = 12) -> list[tuple[str, float]]:
    """The innermost functions (line numbers dropped) with the largest share of samples, in percent."""
    leaf: Counter[str] = Counter()
    for frames, n in _samples(collapsed):
        leaf[re.sub(r":\d+\)$", ")", frames[-1])] += n
    total = sum(leaf.values()) or 1
    return [(f, 100 * n / total) for f, n in leaf.most_common(k)]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# -- installs -------------------------------------------------------------------------------------
def ensure_wrk() -> bool:
    if shutil.which("wrk"):
        return True
    print("wrk is missing: running scripts/ensure-wrk.sh", file=sys.stderr)
    return subprocess.run(["bash", str(ROOT / "scripts" / "ensure-wrk.sh")]).returncode == 0 and bool(
        shutil.which("wrk")
    )


def ensure_venv(name: str) -> Path | None:
    """The executable `name` in its own virtualenv under VENVS, installed with pip on first use;
    None (with the reason printed) when it cannot be installed."""
    exe = VENVS / name / "bin" / EXES[name]
    stamp = VENVS / name / ".installed"
    if exe.exists() and stamp.exists() and stamp.read_text().strip() == PINS[name]:
        return exe
    VENVS.mkdir(parents=True, exist_ok=True)
    log = VENVS / f"{name}.log"
    print(f"installing {PINS[name]} into {VENVS / name} (log: {log})", file=sys.stderr)
    with log.open("w") as out:
        ok = subprocess.run([sys.executable, "-m", "venv", str(VENVS / name)], stdout=out, stderr=out).returncode == 0
        ok = ok and (
            subprocess.run(
                [str(VENVS / name / "bin" / "pip"), "install", "-q", PINS[name]], stdout=out, stderr=out
            ).returncode
            == 0
        )
    if not ok or not exe.exists():
        print(f"could not install {PINS[name]} from the package index (see {log}): skipping {name}", file=sys.stderr)
        return None
    stamp.write_text(PINS[name] + "\n")
    return exe


# -- the other arms -------------------------------------------------------------------------------
@contextlib.contextmanager
def started(argv: list[str], health: str, workdir: str, name: str, env: dict | None = None) -> Iterator[int]:
    """A child process (output to WORKDIR/NAME.log), ready once `health` answers 200; yields its pid."""
    log = open(Path(workdir) / f"{name}.log", "w")  # closed below, after the process
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env or os.environ.copy(), cwd=workdir)
    try:
        wait_http(health, [proc], 120)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def litellm_argv(exe: Path, upstream: str, port: int, workdir: str) -> list[str]:
    config = Path(workdir) / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {BODY['model']}\n"
        "    litellm_params:\n"
        f"      model: openai/{BODY['model']}\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: none\n"
        "litellm_settings:\n"
        "  drop_params: true\n"
        "  set_verbose: false\n"
    )
    return [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]


def router_argv(exe: Path, upstream: str, port: int) -> list[str]:
    return [
        str(exe),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--worker-urls",
        upstream,
        "--policy",
        "round_robin",
        "--log-level",
        "warning",
        "--max-concurrent-requests",
        "4096",
    ]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def version_of(venv: str, dist: str) -> str:
    py = VENVS / venv / "bin" / "python"
    out = subprocess.run(
        [str(py), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"], capture_output=True, text=True
    )
    return out.stdout.strip() or "?"


# -- short requests -------------------------------------------------------------------------------
def measure(url: str, token: str | None, c: int, duration: float, workdir: str, pids: dict[str, int]) -> dict:
    cpu0 = {k: tree_cpu(p) for k, p in pids.items()}
    run = wrk(url, token, c, duration, workdir)
    cpu1 = {k: tree_cpu(p) for k, p in pids.items()}
    served = max(run["rps"] * round(duration), 1.0)
    run["cpu_ms_per_request"] = {k: (cpu1[k] - cpu0[k]) / served * 1000 for k in pids}
    return run


# --gil: only the thread holding the GIL is sampled, so a thread blocked in a C call (aiosqlite's worker
# waiting on its queue) is not taken for work; a SQLite call running without the GIL is not counted.
RAW = ("--nonblocking", "--gil", "--format", "raw", "--output")


def py_spy(exe: Path, pid: int, seconds: int, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(exe), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200", *RAW, str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def short_requests(args: argparse.Namespace) -> dict:
    levels = [int(c) for c in args.concurrency.split(",")]
    workdir = tempfile.mkdtemp(prefix="llmd-compare-")
    skipped: dict[str, str] = {}
    exes: dict[str, Path] = {}
    for arm in ("litellm", "vllm-router"):
        if arm in args.skip:
            skipped[arm] = "skipped (--skip)"
        elif (exe := ensure_venv(arm)) is None:
            skipped[arm] = f"could not be installed ({PINS[arm]}; see {VENVS / (arm + '.log')})"
        else:
            exes[arm] = exe
    versions = {a: version_of(a, "litellm" if a == "litellm" else "vllm-router") for a in exes}
    sim_args = ["--max-num-seqs", "1024"]
    with contextlib.ExitStack() as stack_ctx:
        stack = stack_ctx.enter_context(
            running(
                workdir,
                [sim_args],
                consumer_env={"LLMD_MAX_CONCURRENCY": "1024"},
                sender_env={"LLMD_LOG_LEVEL": args.log_level},
            )
        )
        token = stack.token("bench")
        stack.wait_live(token)
        upstream = stack.sim_urls[0]
        sim_pid = stack.procs[0].pid
        path = "/v1/chat/completions"
        arms: dict[str, dict] = {"direct": {"url": upstream + path, "token": None, "pids": {"upstream": sim_pid}}}
        pids = {"sender": stack.sender.pid, "consumer": stack.consumers[0].pid, "upstream": sim_pid}
        if (beam := broker_pid()) is not None:
            pids["rabbitmq"] = beam
        arms["llm-dispatcher"] = {"url": stack.url + path, "token": token, "pids": pids}
        if "litellm" in exes:
            port = free_port()
            key = "sk-bench-" + uuid.uuid4().hex  # LiteLLM refuses to start without one; the same auth as ours
            env = {**os.environ, "LITELLM_LOG": "ERROR", "DISABLE_SCHEMA_UPDATE": "true", "LITELLM_MASTER_KEY": key}
            env.pop("DATABASE_URL", None)
            pid = stack_ctx.enter_context(
                started(
                    litellm_argv(exes["litellm"], upstream, port, workdir),
                    f"http://127.0.0.1:{port}/health/liveliness",
                    workdir,
                    "litellm",
                    env,
                )
            )
            arms["litellm"] = {"url": f"http://127.0.0.1:{port}{path}", "token": key, "pids": {"litellm": pid}}
        if "vllm-router" in exes:
            port = free_port()
            pid = stack_ctx.enter_context(
                started(
                    router_argv(exes["vllm-router"], upstream, port),
                    f"http://127.0.0.1:{port}/health",
                    workdir,
                    "router",
                )
            )
            arms["vllm-router"] = {"url": f"http://127.0.0.1:{port}{path}", "token": None, "pids": {"router": pid}}
        for a in arms.values():
            if "upstream" not in a["pids"]:
                a["pids"]["upstream"] = sim_pid
            wrk(a["url"], a["token"], 16, 2, workdir)  # warm-up: connection pools, caches
        results: dict[int, dict[str, list[dict]]] = {c: {a: [] for a in arms} for c in levels}
        for c in levels:
            for i in range(args.rounds):
                order = list(arms)[i % len(arms) :] + list(arms)[: i % len(arms)]  # who goes first rotates
                for name in order:
                    a = arms[name]
                    results[c][name].append(measure(a["url"], a["token"], c, args.duration, workdir, a["pids"]))
                    print(f"c={c} round {i + 1} {name}: {results[c][name][-1]['rps']:.0f} req/s", file=sys.stderr)
        profile: dict = {}
        if args.profile and (spy := ensure_venv("py-spy")) is not None:
            secs = int(args.profile)
            outs = {k: Path(workdir) / f"py-spy-{k}.txt" for k in ("sender", "consumer")}
            spies = [py_spy(spy, pids[k], secs, outs[k]) for k in outs]
            time.sleep(0.5)
            wrk(arms["llm-dispatcher"]["url"], token, 16, secs, workdir)
            for s in spies:
                s.wait(60)
            for k, out in outs.items():
                text = out.read_text() if out.exists() else ""
                profile[k] = {"buckets": profile_shares(text), "top": top_functions(text)}
    return {
        "levels": levels,
        "rounds": args.rounds,
        "duration": args.duration,
        "versions": versions,
        "skipped": skipped,
        "results": results,
        "profile": profile,
        "log_level": args.log_level,
    }


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report_short(data: dict) -> str:
    res, lines = data["results"], []
    arms = [a for a in ARMS if a in next(iter(res.values()))]
    names = {
        "direct": "direct",
        "llm-dispatcher": "llm-dispatcher",
        "litellm": f"LiteLLM proxy {data['versions'].get('litellm', '')} (1 worker)",
        "vllm-router": f"vllm-router {data['versions'].get('vllm-router', '')}",
    }
    lines.append(
        f"medians of {data['rounds']} rounds of {data['duration']:g} s (arms alternate within each round), "
        f"{os.cpu_count()} CPUs, wrk -t1, one zero-delay simulator shared by every arm; "
        f"sender log level {data['log_level']} (its access log, one line per request, shows at INFO)\n"
    )
    lines.append("| concurrency | " + " | ".join(names[a] for a in arms) + " |")
    lines.append("|---:|" + "---:|" * len(arms))
    for c, by_arm in res.items():
        d50 = med(by_arm["direct"], "p50_ms")
        cells = []
        for a in arms:
            runs = by_arm[a]
            rps, p50, p99 = med(runs, "rps"), med(runs, "p50_ms"), med(runs, "p99_ms")
            errors = sum(r["non2xx"] for r in runs)
            cell = f"{rps:,.0f} req/s, p50 {p50:.2f} / p99 {p99:.2f} ms"
            if a != "direct":
                cell += f", **{p50 - d50:+.2f} ms** p50"
            if errors or any(r["socket_errors"] for r in runs):
                cell += f" ({errors} non-2xx)"
            cells.append(cell)
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines.append("\nCPU ms per request by process (median of rounds; `upstream` is the shared simulator):\n")
    lines.append("| concurrency | arm | by process | total | without upstream |")
    lines.append("|---:|---|---|---:|---:|")
    for c, by_arm in res.items():
        for a in arms:
            procs = list(by_arm[a][0]["cpu_ms_per_request"])
            per = {p: statistics.median(r["cpu_ms_per_request"][p] for r in by_arm[a]) for p in procs}
            parts = ", ".join(f"{p} {v:.3f}" for p, v in per.items())
            own = sum(v for p, v in per.items() if p != "upstream")
            lines.append(f"| {c} | {a} | {parts} | {sum(per.values()):.3f} | {own:.3f} |")
    hi, lo = max(res), min(res)
    rps = {c: {a: med(res[c][a], "rps") for a in arms} for c in res}
    add = {a: med(res[lo][a], "p50_ms") - med(res[lo]["direct"], "p50_ms") for a in arms}
    lines.append("\nRatios the targets are judged by:\n")
    r_router = ratio(rps[hi].get("llm-dispatcher"), rps[hi].get("vllm-router"))
    r_litellm = {c: ratio(rps[c].get("llm-dispatcher"), rps[c].get("litellm")) for c in res}
    lines.append(
        f"- ours ÷ vllm-router req/s at c={hi}: "
        + (f"**{r_router:.2f}x** (target ≥ 0.30x)" if r_router else "n/a (vllm-router arm missing)")
    )
    lines.append(f"- added p50 at c={lo}: **{add['llm-dispatcher']:+.2f} ms** (target ≤ 1.0 ms)")
    lines.append(
        "- ours ÷ LiteLLM req/s: "
        + ", ".join(f"c={c} **{r:.1f}x**" if r else f"c={c} n/a" for c, r in r_litellm.items())
        + " (target ≥ 10x)"
    )
    for arm, why in data["skipped"].items():
        lines.append(f"- {arm}: {why}")
    for proc, prof in data["profile"].items():
        lines.append(
            f"\npy-spy of the {proc} at c=16, % of samples (attributed: the innermost library frame; "
            "inclusive: anywhere in the stack; self: the innermost frame):\n"
        )
        lines.append("| bucket | attributed | inclusive | self |")
        lines.append("|---|---:|---:|---:|")
        for b, s in prof["buckets"].items():
            lines.append(f"| {b} | {s['attributed']:.1f} % | {s['inclusive']:.1f} % | {s['self']:.1f} % |")
        lines.append(f"\nInnermost functions of the {proc}: " + "; ".join(f"{f} {p:.1f} %" for f, p in prof["top"]))
    return "\n".join(lines)


# -- streams --------------------------------------------------------------------------------------
def percentiles_ms(xs: list[float]) -> list[float]:
    """The 99 cut points (p1 … p99) of `xs` seconds, in ms; zeros with fewer than two values."""
    return [q * 1000 for q in statistics.quantiles(xs, n=100)] if len(xs) > 1 else [0.0] * 99


async def _streams(url: str, n: int, max_tokens: int, token: str, ramp_s: float) -> dict:
    from loadgen import stream_clients

    body = json.dumps({**BODY, "max_tokens": max_tokens, "stream": True}).encode()
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    run = await stream_clients(url, body, n, headers, ramp_s=ramp_s)
    q = percentiles_ms(run.gaps)
    return {
        "complete": run.complete,
        "failed": run.failed,
        "events": run.events,
        "gap_p50_ms": q[49],
        "gap_p99_ms": q[98],
        "steady_gap_p99_ms": percentiles_ms(run.steady_gaps())[98],  # once every stream was open
        "ttft_p50_ms": statistics.median(run.ttfts) * 1000 if run.ttfts else None,
        "wall_s": run.wall,
    }


def stream_run(
    url: str, token: str, n: int, tokens: int, pids: dict[str, int], watch: int | None, ramp_s: float = 0.0
) -> dict:
    """The stream client in a process of its own; CPU of `pids` across it, peak RSS of `watch`."""
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            with contextlib.suppress(OSError):
                peak[0] = max(peak[0], rss_kb(watch))  # type: ignore[arg-type]

    rss0 = rss_kb(watch) if watch else 0
    sampler = threading.Thread(target=sample, daemon=True)
    if watch:
        sampler.start()
    cpu0 = {k: tree_cpu(p) for k, p in pids.items()}
    out = subprocess.run(
        [sys.executable, __file__, "_streams", url, str(n), str(tokens), token or "-", str(ramp_s)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    cpu1 = {k: tree_cpu(p) for k, p in pids.items()}
    stop.set()
    run = json.loads(out.stdout.strip().splitlines()[-1])
    run["cpu_ms_per_1000_events"] = {k: (cpu1[k] - cpu0[k]) * 1000 / max(run["events"], 1) * 1000 for k in pids}
    if watch:
        run["rss_growth_kb_per_stream"] = (peak[0] - rss0) / n
    return run


def streams(args: argparse.Namespace) -> dict:
    counts = [int(n) for n in args.streams.split(",")]
    workdir = tempfile.mkdtemp(prefix="llmd-compare-streams-")
    top = str(max(counts) + 16)
    sim_args = ["--max-num-seqs", top, "--itl-base", str(args.stream_itl)]
    out: dict = {"itl_s": args.stream_itl, "tokens": args.stream_tokens, "ramp_s": args.stream_ramp, "results": {}}
    ramp = args.stream_ramp
    with running(
        workdir,
        [sim_args],
        consumer_env={"LLMD_MAX_CONCURRENCY": top},
        # one pooled upstream connection per open stream (the default pool is 1,000)
        sender_env={"LLMD_LOG_LEVEL": args.log_level, "LLMD_UPSTREAM_MAX_CONNECTIONS": top},
    ) as stack:
        token = stack.token("bench", threshold=10**6)
        stack.wait_live(token)
        sim_pid = stack.procs[0].pid
        path = "/v1/chat/completions"
        up = {"upstream": sim_pid}
        pids = {"sender": stack.sender.pid, "consumer": stack.consumers[0].pid, **up}
        if (beam := broker_pid()) is not None:
            pids["rabbitmq"] = beam
        with contextlib.ExitStack() as arms:
            router = None
            if "vllm-router" not in args.skip and (exe := ensure_venv("vllm-router")) is not None:
                port = free_port()
                health = f"http://127.0.0.1:{port}/health"
                router_pid = arms.enter_context(
                    started(router_argv(exe, stack.sim_urls[0], port), health, workdir, "router")
                )
                router = (f"http://127.0.0.1:{port}", router_pid)
            for n in counts:
                direct = stream_run(stack.sim_urls[0] + path, "", n, args.stream_tokens, up, None, ramp)
                via = stream_run(stack.url + path, token, n, args.stream_tokens, pids, stack.sender.pid, ramp)
                out["results"][n] = {"direct": direct, "llm-dispatcher": via}
                if router is not None:
                    url, pid = router
                    r = stream_run(url + path, "", n, args.stream_tokens, {"router": pid, **up}, pid, ramp)
                    out["results"][n]["vllm-router"] = r
                done = ", ".join(f"{arm} {r['complete']}/{n}" for arm, r in out["results"][n].items())
                print(f"streams n={n}: {done}", file=sys.stderr)
    return out


def arrivals(ramp_s: float) -> str:
    return f"evenly over {ramp_s:g} s" if ramp_s else "all at once"


def report_streams(data: dict) -> str:
    lines = [
        f"{data['tokens']} tokens a stream, one token every {data['itl_s'] * 1000:g} ms (simulator engine step), "
        f"streams started {arrivals(data.get('ramp_s', 0.0))}, one sender process; gaps are between SSE events as "
        "the client reads them; steady: the gaps that ended once every stream had its first token\n",
        "| streams | arm | complete | gap p50 | gap p99 | added p99 | steady gap p99 | added | TTFT p50 |"
        " CPU ms / 1,000 events by process | RSS growth / stream (sender, router) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for n, arms in data["results"].items():
        d99 = arms["direct"]["gap_p99_ms"]
        s99 = arms["direct"].get("steady_gap_p99_ms", 0.0)
        for arm, r in arms.items():
            cpu = ", ".join(f"{p} {v:.1f}" for p, v in r["cpu_ms_per_1000_events"].items())
            added = f"{r['gap_p99_ms'] - d99:+.1f} ms" if arm != "direct" else ""
            rss = f"{r['rss_growth_kb_per_stream']:.1f} KB" if "rss_growth_kb_per_stream" in r else ""
            gaps = f"{r['gap_p50_ms']:.1f} ms | {r['gap_p99_ms']:.1f} ms"
            steady = r.get("steady_gap_p99_ms", 0.0)
            steady_added = f"{steady - s99:+.1f} ms" if arm != "direct" else ""
            lines.append(
                f"| {n} | {arm} | {r['complete']}/{n} | {gaps} | {added} | {steady:.1f} ms | {steady_added} | "
                f"{r['ttft_p50_ms'] or 0:.0f} ms | {cpu} | {rss} |"
            )
    for n, arms in data["results"].items():
        if "vllm-router" in arms:
            ours = arms["llm-dispatcher"]["cpu_ms_per_1000_events"]
            theirs = arms["vllm-router"]["cpu_ms_per_1000_events"]["router"]
            chain = sum(v for k, v in ours.items() if k != "upstream")
            alone, whole = ratio(ours["sender"], theirs) or 0, ratio(chain, theirs) or 0
            lines.append(
                f"\n- {n} streams: CPU per relayed event, sender ÷ vllm-router = {alone:.1f}x; "
                f"sender + consumer + broker ÷ vllm-router = {whole:.1f}x (target ≤ 3x)"
            )
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_streams":
        url, n, tokens, token, ramp = sys.argv[2:7]
        print(json.dumps(asyncio.run(_streams(url, int(n), int(tokens), "" if token == "-" else token, float(ramp)))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--skip", default="", help="comma-separated arms to leave out: litellm, vllm-router")
    ap.add_argument("--profile", type=float, default=0, metavar="S", help="py-spy the sender and consumer S s at c=16")
    ap.add_argument("--log-level", default="WARNING", help="the sender's LLMD_LOG_LEVEL (INFO: production-like)")
    ap.add_argument("--streams", default="", metavar="N,...", help="stream mode: these concurrent stream counts")
    ap.add_argument("--stream-tokens", type=int, default=200)
    ap.add_argument("--stream-itl", type=float, default=0.05, help="seconds per token (default 20 tokens/s)")
    ap.add_argument(
        "--stream-ramp",
        type=float,
        default=0.0,
        metavar="S",
        help="start the streams evenly over S seconds (0: at once)",
    )
    ap.add_argument("--json", help="write the raw results here")
    args = ap.parse_args()
    args.skip = {s for s in args.skip.split(",") if s}
    if args.streams:
        data = streams(args)
        text = report_streams(data)
    else:
        if not ensure_wrk():
            print("wrk is needed: bash scripts/ensure-wrk.sh (as root)", file=sys.stderr)
            return 2
        data = short_requests(args)
        text = report_short(data)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
