"""How uvicorn serves a simulator: one set of settings for the CLI and for in-process servers."""

from __future__ import annotations

from typing import Any

import uvicorn

from vllm_sim.app import SimApp


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
