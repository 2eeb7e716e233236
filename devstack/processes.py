"""The dispatcher's pieces as separate local processes (simulators, consumers, sender), as in production.

``SimProcess`` is one ``llm-dispatcher sim`` child; ``ProcessStack`` a whole dispatcher. Used by
``llm-dispatcher dev``, the benchmarks and the process-level tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from devstack.net import free_port, wait_http

EXE = [sys.executable, "-m", "llm_dispatcher"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """pid and its descendants (a server that runs its workers in child processes: granian, LiteLLM's CLI)."""
    out = [pid]
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            out += descendants(int(child))
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds of pid and of its descendants alive now."""
    total = 0.0
    for p in descendants(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


class SimProcess:
    """``llm-dispatcher sim --port PORT ARGS...`` in a child process; ``url`` is its base URL.

    ``wait_ready()`` (also at context entry) returns once /health answers 200; ``stop()`` sends
    SIGTERM and waits (kills what outlives the grace), also at context exit.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        quiet: bool = False,
        **popen: Any,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = ["sim", "--port", str(self.port), *args]
        self.command = " ".join(["llm-dispatcher", *argv])  # as a reader would type it
        if quiet:
            popen.setdefault("stdout", subprocess.DEVNULL)
            popen.setdefault("stderr", subprocess.DEVNULL)
        self.proc = subprocess.Popen([*EXE, *argv], env=env, **popen)

    def wait_ready(self, timeout: float = 60, others: Sequence[subprocess.Popen] = ()) -> SimProcess:
        """Until /health answers 200; fails at once if this process (or one of ``others``) exits."""
        wait_http(self.url + "/health", [self.proc, *others], timeout)
        return self

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self, grace_s: float = 10) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> SimProcess:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProcessStack:
    """sim(s) + one consumer per sim + one sender, with a fresh queue prefix and token DB.
    `start()` starts that; `start_sim` / `start_consumer` / `start_sender` build other shapes."""

    def __init__(
        self,
        workdir: str,
        sims: list[list[str]] | None = None,
        model: str = "bench-model",
        consumer_env: dict | None = None,
        sender_env: dict | None = None,
        env: dict | None = None,
    ):
        """`env`: the environment of every process; default: this one, isolated by a fresh queue prefix
        and a token database under `workdir`, quiet logs."""
        self.workdir = workdir
        self.model = model
        if env is None:
            prefix = f"bench.{uuid.uuid4().hex[:8]}"
            env = {
                **os.environ,
                "LLMD_QUEUE_PREFIX": prefix,
                "LLMD_DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/bench-{prefix}.db",
                "LLMD_LOG_LEVEL": "WARNING",
                "LLMD_LOG_FORMAT": "text",
                "LLMD_TOKEN_CACHE_TTL_S": "60",
            }
        self.env = env
        self.sim_args = sims or []
        self.consumer_env = consumer_env or {}
        self.sender_env = sender_env or {}
        self.procs: list[subprocess.Popen] = []
        self.sim_urls: list[str] = []
        self.consumers: list[subprocess.Popen] = []

    def start(self) -> ProcessStack:
        for args in self.sim_args:
            self.start_consumer(self.start_sim(args))
        self.start_sender()
        return self

    def start_sim(self, args: list[str], port: int | None = None) -> str:
        sim = SimProcess(["--served-model-name", self.model, *args], port=port, env=self.env)
        self.procs.append(sim.proc)
        sim.wait_ready(others=self.procs)
        self.sim_urls.append(sim.url)
        return sim.url

    def start_consumer(
        self, vllm_url: str, model: str | None = None, port: int | None = None, **env: str
    ) -> subprocess.Popen:
        """A consumer process; its /metrics and probes are at `proc.url`."""
        port = port or free_port()
        n = len(self.consumers)
        proc = subprocess.Popen(
            [*EXE, "consumer"],
            env={
                **self.env,
                "LLMD_MODEL": model or self.model,
                "LLMD_VLLM_URL": vllm_url,
                "LLMD_PORT": str(port),
                "LLMD_HOST": "127.0.0.1",
                "LLMD_REPLICA_ID": f"r{n}",
                **self.consumer_env,
                **env,
            },
        )
        proc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        self.procs.append(proc)
        self.consumers.append(proc)
        wait_http(proc.url + "/livez", [proc])  # type: ignore[attr-defined]
        return proc

    def start_sender(self, port: int | None = None, metrics_port: int | None = None, **env: str) -> subprocess.Popen:
        """The sender; its API at `self.url`, its /metrics listener at `self.metrics_url`."""
        self.port = port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.sender = subprocess.Popen(
            [*EXE, "sender"],
            env={
                **self.env,
                "LLMD_PORT": str(self.port),
                "LLMD_METRICS_PORT": str(self.metrics_port),
                **self.sender_env,
                **env,
            },
        )
        self.procs.append(self.sender)
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"
        wait_http(self.url + "/readyz", self.procs)
        return self.sender

    def token(self, name: str, priority: int = 5, threshold: int = 100000) -> str:
        out = subprocess.run(
            [*EXE, "tokens", "create", name, "--priority", str(priority), "--threshold", str(threshold), "--quiet"],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def wait_live(self, token: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            req = urllib.request.Request(self.url + "/v1/models", headers={"Authorization": f"Bearer {token}"})
            with contextlib.suppress(OSError), urllib.request.urlopen(req, timeout=2) as r:
                if any(m["id"] == self.model for m in json.load(r)["data"]):
                    return
            time.sleep(0.2)
        raise TimeoutError("model never became live")

    def stop(self, grace_s: float = 10) -> None:
        """SIGTERM to all (the sender first: it drains), then wait; kill what outlives the grace."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(grace_s)
            except subprocess.TimeoutExpired:
                p.kill()


@contextlib.contextmanager
def running(*args, **kwargs) -> Iterator[ProcessStack]:
    stack = ProcessStack(*args, **kwargs).start()
    try:
        yield stack
    finally:
        stack.stop()
