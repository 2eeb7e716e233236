"""The processes a fault scenario runs and breaks: simulators, one consumer each, one or two senders,
all against the suite's private RabbitMQ node; and the invariants checked after every scenario.

Every process is named (``sim0``, ``r0``, ``sender0`` ...). A process the scenario kills or replaces on
purpose is restarted by the scenario under the same name; "alive" then means: every named process
runs, and none of them exited without the scenario asking.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika

from devstack.broker import PrivateBroker, PrivateCluster
from devstack.net import free_port, wait_http
from devstack.processes import EXE, ProcessStack
from llm_dispatcher import protocol

MODEL = "fault-model"
ITL_S = 0.05  # 0.5-3 s answers are 10-60 tokens
SIM_ARGS = ["--max-num-seqs", "32", "--itl-base", str(ITL_S)]
# Every process's settings unless a scenario says otherwise: short timers so that a scenario's
# effects settle within its 20 s of checks (the defaults are in the docs' table of settings).
ENV = {
    "LLMD_HEARTBEAT_INTERVAL_S": "0.5",
    "LLMD_SCRAPE_INTERVAL_S": "0.25",
    "LLMD_QUEUE_TIMEOUT_S": "10",
    "LLMD_RETRY_AFTER_S": "1",
    "LLMD_LEASE_TTL_S": "15",
    "LLMD_LEASE_RECONCILE_S": "3",
    "LLMD_TOKEN_CACHE_TTL_S": "2",
    "LLMD_MAX_CONCURRENCY": "24",
    "LLMD_MAX_WAITING": "4",
    "LLMD_SHUTDOWN_GRACE_S": "15",
    "LLMD_MODELS": json.dumps([MODEL]),
    "LLMD_ACCESS_LOG": "false",
}


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    url: str  # probes (consumer, sim) or API (sender)
    metrics_url: str = ""
    version: str = "new"  # "new" or "old" (the release before the current protocol version)
    expected_exit: bool = False  # killed or stopped on purpose, not yet replaced


@dataclass
class FaultStack:
    broker: PrivateBroker | PrivateCluster
    workdir: str
    replicas: int = 2
    senders: int = 1
    env: dict[str, str] = field(default_factory=dict)  # on top of ENV, for every process
    versions: dict[str, str] = field(default_factory=dict)  # process name -> "old" (default "new")
    old_env: dict[str, str] = field(default_factory=dict)  # what makes a process run the old release
    procs: dict[str, Proc] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ps = ProcessStack(self.workdir, model=MODEL)
        self.ps.env.update({**ENV, "LLMD_AMQP_URL": self.broker.url, **self.env})
        self.prefix = self.ps.env["LLMD_QUEUE_PREFIX"]
        self._ports: dict[str, int] = {}

    # -- starting ------------------------------------------------------------------------------
    def start(self) -> FaultStack:
        for i in range(self.replicas):
            self.start_sim(i)
            self.start_consumer(i)
        for i in range(self.senders):
            self.start_sender(i)
        return self

    def _version_env(self, name: str, version: str | None) -> tuple[str, dict[str, str]]:
        v = version or self.versions.get(name, "new")
        if v == "old":
            env = dict(self.old_env)
            if name.startswith("sender"):  # its own token database: the old release has fewer migrations
                env["LLMD_DATABASE_URL"] = f"sqlite+aiosqlite:///{self.workdir}/old-{self.prefix}.db"
            return v, env
        return v, {}

    def start_sim(self, i: int, args: list[str] | None = None) -> Proc:
        name = f"sim{i}"
        port = self._ports.setdefault(name, free_port())
        self._sync()
        url = self.ps.start_sim(args or SIM_ARGS, port=port)
        self.procs[name] = Proc(name, self.ps.procs[-1], url)
        return self.procs[name]

    def start_consumer(self, i: int, version: str | None = None) -> Proc:
        name = f"r{i}"
        v, env = self._version_env(name, version)
        self._sync()
        popen = self.ps.start_consumer(self.procs[f"sim{i}"].url, LLMD_REPLICA_ID=name, **env)
        self.procs[name] = Proc(name, popen, popen.url, popen.url, v)  # type: ignore[attr-defined]
        return self.procs[name]

    def start_sender(self, i: int, version: str | None = None) -> Proc:
        name = f"sender{i}"
        v, env = self._version_env(name, version)
        port = self._ports.setdefault(name, free_port())
        mport = self._ports.setdefault(name + ".metrics", free_port())
        self._sync()
        popen = self.ps.start_sender(port=port, metrics_port=mport, **env)
        self.procs[name] = Proc(name, popen, self.ps.url, self.ps.metrics_url, v)
        return self.procs[name]

    def _sync(self) -> None:
        """The ProcessStack fails a start when one of its processes has exited: it sees the live ones."""
        self.ps.procs[:] = [p.popen for p in self.procs.values() if p.popen.poll() is None]
        self.ps.consumers.clear()

    def token(self, name: str, sender: str = "sender0") -> str:
        """A token in `sender`'s database, made by that sender's release's own CLI."""
        _, env = self._version_env(sender, None)
        out = subprocess.run(
            [*EXE, "tokens", "create", name, "--priority", "5", "--threshold", "100000", "--quiet"],
            env={**self.ps.env, **env},
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def wait_live(self, token: str, timeout: float = 30) -> None:
        """Until every sender lists the model with all its replicas' heartbeats in."""
        for p in self.senders_live():
            self.ps.url = p.url
            self.ps.wait_live(token, timeout)
        time.sleep(1.0)  # every replica's first heartbeat

    # -- breaking ------------------------------------------------------------------------------
    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs[name]
        p.expected_exit = True
        with contextlib.suppress(ProcessLookupError):
            p.popen.send_signal(sig)
        if sig == signal.SIGKILL:
            p.popen.wait(10)

    def stop(self, name: str, timeout: float = 30) -> None:
        """SIGTERM and wait for the exit (a consumer drains, a sender finishes its streams)."""
        self.kill(name, signal.SIGTERM)
        try:
            self.procs[name].popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.procs[name].popen.kill()

    def senders_live(self) -> list[Proc]:
        return [p for n, p in sorted(self.procs.items()) if n.startswith("sender") and not p.expected_exit]

    def sender_urls(self) -> list[str]:
        return [p.url for p in self.senders_live()]

    def sims(self) -> list[Proc]:
        return [p for n, p in sorted(self.procs.items()) if n.startswith("sim")]

    def consumers(self) -> list[Proc]:
        return [p for n, p in sorted(self.procs.items()) if n.startswith("r")]

    # -- looking -------------------------------------------------------------------------------
    def leases(self) -> dict[str, int | None]:
        """Every consumer's granted, unreleased leases (None: it does not answer)."""
        out: dict[str, int | None] = {}
        for p in self.consumers():
            try:
                with urllib.request.urlopen(p.url + "/readyz", timeout=2) as r:
                    out[p.name] = json.load(r).get("in_flight")
            except urllib.error.HTTPError as exc:  # 503 while not ready: the body still tells
                out[p.name] = json.loads(exc.read() or b"{}").get("in_flight")
            except OSError:
                out[p.name] = None
        return out

    def sender_in_flight(self, waiting: bool = True) -> dict[str, float | None]:
        """Per sender: requests being proxied (llmd_in_flight), plus tickets waiting (llmd_waiting_tickets)
        unless `waiting` is False."""
        out: dict[str, float | None] = {}
        for p in self.senders_live():
            try:
                text = fetch(p.metrics_url + "/metrics")
            except OSError:
                out[p.name] = None
                continue
            out[p.name] = metric_sum(text, "llmd_in_flight") + (
                metric_sum(text, "llmd_waiting_tickets") if waiting else 0
            )
        return out

    def counter(self, procs: list[Proc], name: str, **labels: str) -> float:
        total = 0.0
        for p in procs:
            with contextlib.suppress(OSError):
                total += metric_sum(fetch((p.metrics_url or p.url) + "/metrics"), name, **labels)
        return total

    async def queue_depth(self) -> int | None:
        """Tickets waiting in the model's queues (on every node of a cluster); None if one is unreadable."""
        total = 0
        for node, url in enumerate(self.broker.url.split(",")):
            try:
                conn = await asyncio.wait_for(aio_pika.connect(url), 5)
            except Exception:
                return None
            try:
                async with conn:
                    ch = await conn.channel()
                    q = await ch.declare_queue(protocol.model_queue(self.prefix, MODEL, node), passive=True)
                    total += q.declaration_result.message_count or 0
            except Exception:
                return None
        return total

    def dead(self) -> list[str]:
        return [n for n, p in sorted(self.procs.items()) if p.popen.poll() is not None]

    async def invariants(self) -> dict:
        sender = await asyncio.to_thread(self.sender_in_flight)
        leases = await asyncio.to_thread(self.leases)
        depth = await self.queue_depth()
        dead = self.dead()
        ok = all(v == 0 for v in sender.values()) and all(v == 0 for v in leases.values()) and depth == 0 and not dead
        return {"ok": ok, "sender_in_flight": sender, "leases": leases, "queue": depth, "dead": dead}

    def close(self) -> None:
        """Everything stopped: SIGTERM, then SIGKILL what outlives a short grace."""
        for p in self.procs.values():
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.popen.wait(20)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()


def fetch(url: str, timeout: float = 3) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def post(url: str, body: dict | None = None, timeout: float = 5) -> None:
    req = urllib.request.Request(
        url, data=json.dumps(body or {}).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        r.read()


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus text-format metric's samples (`name`, or `name_total` for a counter) whose
    labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric not in (name, name + "_total"):
            continue
        if any(f'{k}="{v}"' not in rest for k, v in labels.items()):
            continue
        with contextlib.suppress(ValueError):
            total += float(value)
    return total


# -- the release before the current protocol version -----------------------------------------------
@dataclass(frozen=True)
class OldRelease:
    """The source tree of the last commit before PROTOCOL_VERSION took its current value, unpacked
    (`git archive`) under `path`; a process run with `env` imports it instead of this checkout."""

    commit: str
    path: Path
    version: int

    @property
    def env(self) -> dict[str, str]:
        # PYTHONSAFEPATH: `python -m` must not put the working directory (this checkout) first.
        return {"PYTHONPATH": str(self.path), "PYTHONSAFEPATH": "1"}


def old_release(repo: Path, cache: Path) -> OldRelease:
    current = protocol.PROTOCOL_VERSION
    bumps = git(
        repo, "log", "--reverse", "--format=%H", f"-SPROTOCOL_VERSION = {current}", "--", "llm_dispatcher/protocol.py"
    )
    if not bumps:
        raise RuntimeError(f"no commit sets PROTOCOL_VERSION = {current} (a shallow clone?)")
    commit = git(repo, "rev-parse", f"{bumps.split()[0]}^")
    path = cache / f"llmd-{commit[:12]}"
    if not (path / "llm_dispatcher" / "protocol.py").exists():
        path.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(repo), "archive", commit], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(path)], input=archive, check=True)
    rel = OldRelease(commit, path, 0)
    out = subprocess.run(
        [*EXE[:1], "-c", "import llm_dispatcher.protocol as p; print(p.PROTOCOL_VERSION, p.__file__)"],
        env={**os.environ, **rel.env},
        check=True,
        capture_output=True,
        text=True,
        cwd=str(repo),
    ).stdout.split()
    if not out[1].startswith(str(path)):
        raise RuntimeError(f"the old release does not load from {path}: {out[1]}")
    return OldRelease(commit, path, int(out[0]))


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def wait_ready(url: str, procs: list[subprocess.Popen], timeout: float = 60) -> None:
    wait_http(url + "/readyz", procs, timeout)
