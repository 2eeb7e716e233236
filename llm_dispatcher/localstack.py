"""A whole dispatcher as separate local processes (simulators, consumers, sender), as in production.

Used by `llm-dispatcher dev`, the benchmarks and the process-level tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator

EXE = [sys.executable, "-m", "llm_dispatcher"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, procs: list[subprocess.Popen], timeout: float = 60) -> None:
    """Until `url` answers 200; fails at once if one of `procs` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"process exited early (code {p.returncode}): {p.args!r}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


class Stack:
    """sim(s) + one consumer per sim + one sender, with a fresh queue prefix and token DB.
    `start()` starts that; `start_sim` / `start_consumer` / `start_sender` build other shapes."""

    def __init__(self, workdir: str, sims: list[list[str]] | None = None, model: str = "bench-model",
                 consumer_env: dict | None = None, sender_env: dict | None = None, env: dict | None = None):
        """`env`: the environment of every process; default: this one, isolated by a fresh queue prefix
        and a token database under `workdir`, quiet logs."""
        self.workdir = workdir
        self.model = model
        if env is None:
            prefix = f"bench.{uuid.uuid4().hex[:8]}"
            env = {**os.environ, "LLMD_QUEUE_PREFIX": prefix,
                   "LLMD_DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/bench-{prefix}.db",
                   "LLMD_LOG_LEVEL": "WARNING", "LLMD_LOG_FORMAT": "text", "LLMD_TOKEN_CACHE_TTL_S": "60"}
        self.env = env
        self.sim_args = sims or []
        self.consumer_env = consumer_env or {}
        self.sender_env = sender_env or {}
        self.procs: list[subprocess.Popen] = []
        self.sim_urls: list[str] = []
        self.consumers: list[subprocess.Popen] = []

    def start(self) -> Stack:
        for args in self.sim_args:
            self.start_consumer(self.start_sim(args))
        self.start_sender()
        return self

    def start_sim(self, args: list[str], port: int | None = None) -> str:
        port = port or free_port()
        self.procs.append(subprocess.Popen(
            [*EXE, "sim", "--port", str(port), "--served-model-name", self.model, *args], env=self.env))
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", self.procs)
        self.sim_urls.append(url)
        return url

    def start_consumer(self, vllm_url: str, model: str | None = None, port: int | None = None,
                       **env: str) -> subprocess.Popen:
        """A consumer process; its /metrics and probes are at `proc.url`."""
        port = port or free_port()
        n = len(self.consumers)
        proc = subprocess.Popen([*EXE, "consumer"], env={
            **self.env, "LLMD_MODEL": model or self.model, "LLMD_VLLM_URL": vllm_url, "LLMD_PORT": str(port),
            "LLMD_HOST": "127.0.0.1", "LLMD_REPLICA_ID": f"r{n}", **self.consumer_env, **env})
        proc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        self.procs.append(proc)
        self.consumers.append(proc)
        wait_http(proc.url + "/livez", [proc])  # type: ignore[attr-defined]
        return proc

    def start_sender(self, port: int | None = None, **env: str) -> subprocess.Popen:
        self.port = port or free_port()
        self.sender = subprocess.Popen([*EXE, "sender"], env={
            **self.env, "LLMD_PORT": str(self.port), **self.sender_env, **env})
        self.procs.append(self.sender)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(self.url + "/readyz", self.procs)
        return self.sender

    def token(self, name: str, priority: int = 5, threshold: int = 100000) -> str:
        out = subprocess.run(
            [*EXE, "tokens", "create", name, "--priority", str(priority), "--threshold", str(threshold), "--quiet"],
            env=self.env, check=True, capture_output=True, text=True)
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
def running(*args, **kwargs) -> Iterator[Stack]:
    stack = Stack(*args, **kwargs).start()
    try:
        yield stack
    finally:
        stack.stop()
