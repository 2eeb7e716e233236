"""`llm-dispatcher sender`: the gateway process."""

from __future__ import annotations

import argparse

from llm_dispatcher.logs import setup_logging
from llm_dispatcher.serve import uvicorn_server
from sender.app import create_app
from sender.settings import SenderSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (LLMD_HOST)")
    parser.add_argument("--port", type=int, help="listen port (LLMD_PORT)")


def run(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    settings = SenderSettings(**overrides)
    setup_logging(settings.log_level, settings.log_format)
    server = uvicorn_server(
        create_app(settings),
        settings.host,
        settings.port,
        settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    server.run()
    return 0
