"""A private RabbitMQ node on loopback (its own node name, ports and data directory), for tests and
benchmarks that stop, restart or SIGKILL the broker without touching the machine's shared one.

    with PrivateBroker() as broker:      # started; broker.url is its amqp:// URL
        broker.kill()                    # SIGKILL: no goodbye to any client
        broker.shutdown()                # graceful: the node closes every connection, then exits
        broker.start()                   # the same node again (same data, same port)

    with PrivateCluster(3) as cluster:   # three such nodes joined in one RabbitMQ cluster
        cluster.url                      # their URLs, comma-separated, node 0 first (LLMD_AMQP_URL)
        cluster.nodes[0].kill()          # one node lost; .start() brings it back into the cluster
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from devstack.net import free_port


def available() -> bool:
    return shutil.which("rabbitmq-server") is not None


START_ATTEMPTS = 3


class PrivateBroker:
    def __init__(self, port: int | None = None, start_timeout_s: float = 90.0):
        self.port = port or free_port()
        self.dist_port = free_port()
        self.node = f"llmd-{uuid.uuid4().hex[:8]}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.start_timeout_s = start_timeout_s
        self.dir = Path(tempfile.mkdtemp(prefix="llmd-broker-"))
        (self.dir / "mnesia").mkdir()
        (self.dir / "log").mkdir()
        (self.dir / "enabled_plugins").write_text("[].\n")  # no management plugin: no port 15672 clash
        self._pid: int | None = None
        self._proc: subprocess.Popen | None = None
        _give_to_broker_user(self.dir)

    def _env(self) -> dict[str, str]:
        d = self.dir
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(d / "none"),  # not the machine's (it names the shared node's port)
            "RABBITMQ_PID_FILE": str(d / "pid"),
        }

    def start(self) -> PrivateBroker:
        """Boot the node (the same data and AMQP port each time). A node that exits while booting is
        booted again, up to START_ATTEMPTS times, on a new distribution port (the old one may have been
        taken since it was chosen; clients never see that port)."""
        for attempt in range(START_ATTEMPTS):
            exit_code = self._boot()
            if exit_code is None:
                break
            if attempt == START_ATTEMPTS - 1:
                log = (self.dir / "server.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"rabbitmq-server exited ({exit_code}) {START_ATTEMPTS} times; its log ends:\n{log}")
            self.dist_port = free_port()
            time.sleep(1.0)
        pid_file = self.dir / "pid"
        self._pid = int(pid_file.read_text().strip()) if pid_file.exists() else None
        return self

    def _boot(self) -> int | None:
        """Start rabbitmq-server and wait until it accepts AMQP: None, or its exit code if it exits first."""
        (self.dir / "pid").unlink(missing_ok=True)
        with open(self.dir / "server.log", "ab") as out:  # the child keeps its own copy of the descriptor
            self._proc = subprocess.Popen(
                ["rabbitmq-server"], env=self._env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + self.start_timeout_s
        while not self.accepting():
            if self._proc.poll() is not None:
                return self._proc.returncode
            if time.monotonic() > deadline:
                raise TimeoutError(f"private broker not up within {self.start_timeout_s:g} s; see {self.dir}")
            time.sleep(0.2)
        return None

    @property
    def pid(self) -> int | None:
        """The node's Erlang VM process (None while it is not running)."""
        return self._pid

    def accepting(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the node (the Erlang VM): connections drop without a close frame."""
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._pid = None
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait(10)
            self._proc = None
        deadline = time.monotonic() + 10
        while self.accepting() and time.monotonic() < deadline:
            time.sleep(0.05)

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Stop the node gracefully (SIGTERM: connections closed with a close frame, queues synced to
        disk); SIGKILL only if it outlives `timeout_s`."""
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self._proc is not None:
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + timeout_s
        while self.accepting() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.kill()  # whatever is left of it (the process group)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def ctl(self, *args: str) -> str:
        """rabbitmqctl against this node; its output (CalledProcessError when it fails)."""
        return subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.node, *args], env=self._env(), check=True, capture_output=True, text=True
        ).stdout

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class PrivateCluster:
    """`size` private nodes clustered together (node 0 is the seed the others join)."""

    def __init__(self, size: int = 3, start_timeout_s: float = 90.0):
        self.nodes = [PrivateBroker(start_timeout_s=start_timeout_s) for _ in range(size)]

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def start(self) -> PrivateCluster:
        try:
            for node in self.nodes:
                node.start()
            seed = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", seed.node)
                node.ctl("start_app")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> PrivateCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _give_to_broker_user(path: Path) -> None:
    """rabbitmq-server run as root switches to the `rabbitmq` user: it must own its directories."""
    if os.geteuid() != 0:
        return
    try:
        import pwd

        user = pwd.getpwnam("rabbitmq")
    except (KeyError, ImportError):
        return
    for p in [path, *path.rglob("*")]:
        os.chown(p, user.pw_uid, user.pw_gid)
