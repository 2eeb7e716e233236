"""Starting the dispatcher's processes for benchmarks (each in its own process, as in production)."""

from __future__ import annotations

import contextlib
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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"process exited early: {p.args}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - loopback
                if r.status == 200:
                    return
        time.sleep(0.1)
    raise TimeoutError(url)


class Stack:
    """sim(s) + one consumer per sim + one sender, with a fresh queue prefix and token DB."""

    def __init__(self, workdir: str, sims: list[list[str]], model: str = "bench-model",
                 consumer_env: dict | None = None, sender_env: dict | None = None):
        self.workdir = workdir
        self.model = model
        self.prefix = f"bench.{uuid.uuid4().hex[:8]}"
        self.db = f"sqlite+aiosqlite:///{workdir}/bench-{self.prefix}.db"
        self.env = {**os.environ, "LLMD_QUEUE_PREFIX": self.prefix, "LLMD_DATABASE_URL": self.db,
                    "LLMD_LOG_LEVEL": "WARNING", "LLMD_LOG_FORMAT": "text"}
        self.sim_args = sims
        self.consumer_env = consumer_env or {}
        self.sender_env = sender_env or {}
        self.procs: list[subprocess.Popen] = []
        self.sim_urls: list[str] = []

    def start(self) -> Stack:
        for i, args in enumerate(self.sim_args):
            port = free_port()
            self.procs.append(subprocess.Popen(
                [*EXE, "sim", "--port", str(port), "--served-model-name", self.model, *args], env=self.env))
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/health", self.procs)
            self.sim_urls.append(url)
            cport = free_port()
            self.procs.append(subprocess.Popen([*EXE, "consumer"], env={
                **self.env, "LLMD_MODEL": self.model, "LLMD_VLLM_URL": url, "LLMD_PORT": str(cport),
                "LLMD_HOST": "127.0.0.1", "LLMD_REPLICA_ID": f"r{i}", **self.consumer_env}))
        self.port = free_port()
        self.procs.append(subprocess.Popen([*EXE, "sender"], env={
            **self.env, "LLMD_PORT": str(self.port), "LLMD_TOKEN_CACHE_TTL_S": "60", **self.sender_env}))
        wait_http(f"http://127.0.0.1:{self.port}/readyz", self.procs)
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def token(self, name: str, priority: int = 5, threshold: int = 100000) -> str:
        out = subprocess.run(
            [*EXE, "tokens", "create", name, "--priority", str(priority), "--threshold", str(threshold), "--quiet"],
            env=self.env, check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def wait_live(self, token: str, replicas: int = 1, timeout: float = 30) -> None:
        import json

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            req = urllib.request.Request(self.url + "/v1/models", headers={"Authorization": f"Bearer {token}"})
            with contextlib.suppress(OSError), urllib.request.urlopen(req, timeout=2) as r:  # noqa: S310
                if any(m["id"] == self.model for m in json.load(r)["data"]):
                    return
            time.sleep(0.2)
        raise TimeoutError("model never became live")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


@contextlib.contextmanager
def running(*args, **kwargs) -> Iterator[Stack]:
    stack = Stack(*args, **kwargs).start()
    try:
        yield stack
    finally:
        stack.stop()
