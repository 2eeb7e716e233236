"""Run a simulator under uvicorn: in a background thread (tests, benchmarks) or in the foreground (CLI)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from llm_dispatcher.sim.app import SimApp, create_app, install_log_filter
from llm_dispatcher.sim.config import SimConfig


def uvicorn_config(
    app: SimApp, *, log_level: str = "warning", access_log: bool = False, **kwargs: Any
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level=log_level,
        access_log=access_log,
        backlog=4096,
        timeout_keep_alive=30,
        **kwargs,
    )


class _ThreadServer(uvicorn.Server):
    """uvicorn.Server whose main loop wakes at once when told to stop (not on its 0.1 s tick)."""

    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while not await self.on_tick(0):  # counter 0: refreshes the Date header each time
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

    def request_exit(self) -> None:
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(wake.set)


class SimServer:
    """A simulator listening on a real loopback socket, served by uvicorn in a daemon thread.

    ``url`` is its base URL (``http://127.0.0.1:PORT``); ``app`` gives tests the engine and config.
    ``kill()`` stops it abruptly; ``stop()`` shuts it down gracefully (also at context exit).
    """

    def __init__(self, config: SimConfig | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or SimConfig()
        self.app = create_app(self.config)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._server = _ThreadServer(uvicorn_config(self.app))
        self._thread = threading.Thread(target=self._run, name=f"sim-{self.port}", daemon=True)
        self._error: BaseException | None = None
        self.app.on_exit = self._request_exit

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``url + "/v1"``)."""
        return self.url + "/v1"

    def _run(self) -> None:
        try:
            import uvloop

            uvloop.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # surfaced by start()
            self._error = exc

    def _request_exit(self) -> None:
        self._server.request_exit()

    def start(self, timeout: float = 10.0) -> SimServer:
        install_log_filter()
        self._thread.start()
        end = time.monotonic() + timeout
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"simulator failed to start: {self._error!r}")
            if time.monotonic() > end:
                raise TimeoutError("simulator did not start in time")
            time.sleep(0.005)
        return self

    def request_stop(self) -> None:
        """Begin a graceful shutdown without waiting for it (``stop()`` waits)."""
        self._server.request_exit()

    def stop(self, timeout: float = 5.0) -> None:
        self._server.request_exit()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        with contextlib.suppress(OSError):
            self._sock.close()

    def kill(self) -> None:
        """Stop at once, without draining in-flight requests."""
        self._server.force_exit = True
        self.stop()

    def __enter__(self) -> SimServer:
        return self if self._server.started else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve_in_thread(config: SimConfig | None = None, **overrides: Any) -> Iterator[SimServer]:
    """``with serve_in_thread(SimConfig(...)) as sim: ... sim.url``."""
    if overrides:
        config = SimConfig(**overrides) if config is None else SimConfig(**{**config.__dict__, **overrides})
    server = SimServer(config).start()
    try:
        yield server
    finally:
        server.stop()
