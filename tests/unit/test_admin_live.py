"""The admin API's live views (sender/admin/live.py): pure functions of heartbeats, depths and refusals."""

from __future__ import annotations

from llm_dispatcher.protocol import Heartbeat
from sender.admin.live import models_view, queues_view
from sender.metrics import OTHER_MODEL
from sender.refusals import NO_MODEL


def hb(model: str, replica: str, *, ready: bool = True, in_flight: int = 0, cap: int = 4, **kw) -> Heartbeat:
    return Heartbeat(model, replica, f"http://{replica}:8000", ready, cap, in_flight, **kw)


def test_every_known_model_is_listed_even_without_a_replica_and_replicas_are_sorted():
    replicas = [(hb("m", "r2", tokens_per_second=12.5, admission="admit"), 0.4), (hb("m", "r1"), 1.23456)]
    view = models_view(["idle", "m"], replicas, {"m": 3, "idle": None})
    assert [(m["model"], m["queue_depth"]) for m in view] == [("idle", None), ("m", 3)]
    assert view[0]["replicas"] == []
    r1, r2 = view[1]["replicas"]
    assert (r1["replica"], r1["heartbeat_age_s"], r1["admission"], r1["tokens_per_second"]) == ("r1", 1.235, None, None)
    assert (r2["replica"], r2["admission"], r2["tokens_per_second"]) == ("r2", "admit", 12.5)


def test_capacity_counts_ready_replicas_and_in_flight_counts_all():
    replicas = [
        (hb("m", "a", in_flight=2, cap=4, admission="at_max_concurrency"), 0.1),
        (hb("m", "b", ready=False, in_flight=1, cap=8, admission="draining"), 0.1),
    ]
    (row,) = queues_view(["m"], replicas, {"m": 5}, {}, 300)["data"]
    assert (row["queue_depth"], row["in_flight"], row["capacity"], row["replicas_ready"]) == (5, 3, 4, 1)
    assert row["admission"] == {"a": "at_max_concurrency", "b": "draining"}


def test_refusals_without_a_served_model_are_summed_apart():
    refusals = {
        "m": {"queue_over_threshold": 3},
        NO_MODEL: {"invalid_api_key": 2},
        OTHER_MODEL: {"model_not_found": 1, "invalid_api_key": 1},
    }
    view = queues_view(["m"], [], {"m": 0}, refusals, 60)
    assert view["window_s"] == 60
    assert view["data"][0]["refusals"] == {"queue_over_threshold": 3}
    assert view["other_refusals"] == {"invalid_api_key": 3, "model_not_found": 1}
