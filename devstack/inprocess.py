"""Servers inside this process, on real loopback sockets, so that clients talk to them over HTTP.

``AsgiServer`` serves any ASGI app with uvicorn, either on its own event loop in a daemon thread
(uvloop) or on a ``BackgroundLoop`` shared with other in-process services (the test stack runs the
sender, its consumers and their simulators on one). ``SimServer`` is an ``AsgiServer`` around a vLLM
simulator: ``.url``, ``.base_url``, ``.app`` (engine, metrics, config for white-box checks), ``.config``.

    with SimServer(SimConfig(itl_base=0.01)) as sim:
        httpx.get(sim.url + "/health")
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import uvicorn

from vllm_sim import SimApp, SimConfig, create_app
from vllm_sim.faults import install_log_filter
from vllm_sim.server import uvicorn_config

T = TypeVar("T")


class BackgroundLoop:
    """An event loop in a daemon thread; `call(coro)` runs a coroutine there and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="stack-loop")
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class _Server(uvicorn.Server):
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


class AsgiServer:
    """An ASGI app served by uvicorn (``config``) on a loopback socket bound at construction.

    ``loop=None``: on its own loop in a daemon thread; otherwise on that ``BackgroundLoop``.
    ``start()`` returns once it accepts connections; ``stop()`` shuts it down gracefully (also at
    context exit); ``kill()`` stops it without draining in-flight requests.
    """

    def __init__(
        self, config: uvicorn.Config, *, loop: BackgroundLoop | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        # Listening now, not when the server starts: a port another socket took since it was picked
        # fails here (EADDRINUSE), before anything is started, so the caller can pick another.
        self._sock.listen(2048)
        self.host, self.port = self._sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._server = _Server(config)
        self._bg = loop
        self._task: Future[None] | None = None
        self._thread = (
            threading.Thread(target=self._run, name=f"asgi-{self.port}", daemon=True) if loop is None else None
        )
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            import uvloop

            uvloop.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # surfaced by start()
            self._error = exc

    def _failed(self) -> bool:
        if self._thread is not None:
            return self._error is not None or not self._thread.is_alive()
        assert self._task is not None
        if self._task.done():
            self._task.result()  # raises what stopped it
            return True
        return False

    def start(self, timeout: float = 10.0) -> AsgiServer:
        if self._thread is not None:
            self._thread.start()
        else:
            assert self._bg is not None
            self._task = self._bg.submit(self._server.serve(sockets=[self._sock]))
        end = time.monotonic() + timeout
        while not self._server.started:
            if self._failed():
                raise RuntimeError(f"server on port {self.port} failed to start: {self._error!r}")
            if time.monotonic() > end:
                raise TimeoutError(f"server on port {self.port} did not start in time")
            time.sleep(0.005)
        return self

    def request_stop(self) -> None:
        """Begin a graceful shutdown without waiting for it (``stop()`` waits)."""
        self._server.request_exit()

    def stop(self, timeout: float = 5.0) -> None:
        self._server.request_exit()
        if self._thread is not None:
            if self._thread.ident is not None:
                self._thread.join(timeout)
                if self._thread.is_alive():
                    self._server.force_exit = True
                    self._thread.join(timeout)
        elif self._task is not None:
            self._task.result(timeout)
        with contextlib.suppress(OSError):
            self._sock.close()

    def kill(self) -> None:
        """Stop at once, without draining in-flight requests."""
        self._server.force_exit = True
        self.stop()

    def __enter__(self) -> AsgiServer:
        return self if self._server.started else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SimServer(AsgiServer):
    """A vLLM simulator in this process (``llm-dispatcher sim``'s uvicorn settings)."""

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        loop: BackgroundLoop | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.config = config or SimConfig()
        self.app: SimApp = create_app(self.config)
        super().__init__(uvicorn_config(self.app), loop=loop, host=host, port=port)
        self.app.on_exit = self.request_stop  # POST /sim/die {"exit": true}

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``url + "/v1"``)."""
        return self.url + "/v1"

    def start(self, timeout: float = 10.0) -> SimServer:
        install_log_filter()
        super().start(timeout)
        return self

    def __enter__(self) -> SimServer:
        return self if self._server.started else self.start()
