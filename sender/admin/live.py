"""/admin/v1/models and /admin/v1/queues: what this sender knows now, from the consumers'
heartbeats, the model queues' depths and its own refusals. The views are pure functions of those
readings; the routes only gather them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from fastapi import APIRouter, Query

from llm_dispatcher.protocol import Heartbeat
from sender.admin.http import JSON
from sender.admin.schemas import ModelsState, QueuesState
from sender.context import SenderContext
from sender.metrics import OTHER_MODEL
from sender.refusals import NO_MODEL

MAX_MINUTES = 15  # the refusal counter's window


def replica_view(hb: Heartbeat, age_s: float) -> dict:
    return {
        "replica": hb.replica,
        "url": hb.url,
        "ready": hb.ready,
        "in_flight": hb.in_flight,
        "max_concurrency": hb.max_concurrency,
        "running": hb.running,
        "waiting": hb.waiting,
        "kv_cache_usage": hb.kv_cache_usage,
        "tokens_per_second": hb.tokens_per_second,
        "admission": hb.admission or None,
        "heartbeat_age_s": round(max(0.0, age_s), 3),
    }


def _by_model(
    models: Iterable[str], replicas: Iterable[tuple[Heartbeat, float]]
) -> dict[str, list[tuple[Heartbeat, float]]]:
    out: dict[str, list[tuple[Heartbeat, float]]] = {m: [] for m in models}
    for hb, age in replicas:
        out.setdefault(hb.model, []).append((hb, age))
    return {m: sorted(rs, key=lambda r: r[0].replica) for m, rs in sorted(out.items())}


def models_view(
    models: Iterable[str], replicas: Iterable[tuple[Heartbeat, float]], depths: dict[str, int | None]
) -> list[dict]:
    """Every model (configured, or seen since the start) with its replicas heard from lately."""
    return [
        {"model": m, "queue_depth": depths.get(m), "replicas": [replica_view(hb, age) for hb, age in rs]}
        for m, rs in _by_model(models, replicas).items()
    ]


def queues_view(
    models: Iterable[str],
    replicas: Iterable[tuple[Heartbeat, float]],
    depths: dict[str, int | None],
    refusals: dict[str, dict[str, int]],
    window_s: int,
) -> dict:
    """Per model: depth, in-flight against the ready replicas' capacity, refusals, admission decisions."""
    rows = []
    grouped = _by_model(models, replicas)
    for m, rs in grouped.items():
        ready = [hb for hb, _ in rs if hb.ready]
        rows.append(
            {
                "model": m,
                "queue_depth": depths.get(m),
                "in_flight": sum(hb.in_flight for hb, _ in rs),
                "capacity": sum(hb.max_concurrency for hb in ready),
                "replicas_ready": len(ready),
                "refusals": dict(sorted(refusals.get(m, {}).items())),
                "admission": {hb.replica: hb.admission for hb, _ in rs if hb.admission},
            }
        )
    other: dict[str, int] = {}
    for m, by_reason in refusals.items():
        if m in grouped and m not in (NO_MODEL, OTHER_MODEL):
            continue
        for reason, n in by_reason.items():
            other[reason] = other.get(reason, 0) + n
    return {"object": "list", "window_s": window_s, "data": rows, "other_refusals": dict(sorted(other.items()))}


async def depths(ctx: SenderContext, models: list[str]) -> dict[str, int | None]:
    """Each model queue's depth (a recent reading is reused); None where the broker did not answer."""
    max_age = ctx.settings.queue_depth_max_age_s

    async def one(model: str) -> int | None:
        try:
            return await asyncio.wait_for(ctx.dispatcher.depth(model, max_age), 5)
        except Exception:
            return None

    return dict(zip(models, await asyncio.gather(*(one(m) for m in models)), strict=True))


def add_live_routes(router: APIRouter, get_ctx: Callable[[], SenderContext]) -> None:
    @router.get("/models", summary="Models and their replicas, live", response_model=ModelsState)
    async def models() -> JSON:
        ctx = get_ctx()
        replicas = ctx.registry.seen()
        names = sorted(set(ctx.registry.model_names()) | {hb.model for hb, _ in replicas})
        return JSON({"object": "list", "data": models_view(names, replicas, await depths(ctx, names))})

    @router.get("/queues", summary="Queue depth, in-flight against capacity, refusals", response_model=QueuesState)
    async def queues(
        minutes: int = Query(5, ge=1, le=MAX_MINUTES, description="The window for refusals"),
    ) -> JSON:
        ctx = get_ctx()
        replicas = ctx.registry.seen()
        names = sorted(set(ctx.registry.model_names()) | {hb.model for hb, _ in replicas})
        window_s = minutes * 60
        refusals = ctx.metrics.recent_refusals.recent(window_s)
        return JSON(queues_view(names, replicas, await depths(ctx, names), refusals, window_s))
