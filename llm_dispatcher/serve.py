"""Running an ASGI app and a service side by side in one event loop, with staged shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvicorn

log = logging.getLogger(__name__)


def uvicorn_server(app, host: str, port: int, log_level: str = "warning", **kwargs) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        timeout_graceful_shutdown=kwargs.pop("timeout_graceful_shutdown", None),
        **kwargs,
    )
    server = uvicorn.Server(config)
    return server


async def wait_for_signal() -> None:
    """Resolves on the first SIGINT/SIGTERM; a second one exits at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hits = 0

    def _handler() -> None:
        nonlocal hits
        hits += 1
        if hits > 1:
            log.warning("second signal: exiting now")
            raise SystemExit(1)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, _handler)
    await stop.wait()
