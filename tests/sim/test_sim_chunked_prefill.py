"""Chunked prefill: vLLM V1's per-step token budget (``max_num_batched_tokens``), decodes first."""

from __future__ import annotations

import argparse

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vllm_sim.cli import add_arguments, config_from_args
from vllm_sim.config import SimConfig
from vllm_sim.engine import Engine, SimRequest, StepPlan, plan_step
from vllm_sim.metrics import SimMetrics

# -- plan_step: the budget split, pure --------------------------------------------------------


def test_decodes_cost_one_token_each_and_the_rest_of_the_budget_goes_to_the_next_prompt():
    plan = plan_step([0, 0, 0], [100], budget=16, free_slots=5, kv_free=10_000)
    assert plan == StepPlan(running=(1, 1, 1), admitted=(13,), batch_size=4, prefill_tokens=13)


def test_running_requests_go_first_in_order_and_those_past_the_budget_sit_the_step_out():
    waiting = iter([50])
    plan = plan_step([0, 30, 20], waiting, budget=16, free_slots=5, kv_free=10_000)
    assert plan == StepPlan(running=(1, 15, 0), admitted=(), batch_size=2, prefill_tokens=15)
    assert next(waiting) == 50  # the budget was spent: the queue was not read


def test_several_waiting_requests_are_admitted_while_budget_is_left_the_last_one_chunked():
    plan = plan_step([], [5, 6, 20, 3], budget=16, free_slots=8, kv_free=10_000)
    assert plan.admitted == (5, 6, 5) and plan.prefill_tokens == 16 and plan.batch_size == 3


def test_admission_stops_at_free_slots():
    assert plan_step([0], [5, 5], budget=100, free_slots=1, kv_free=10_000).admitted == (5,)


def test_kv_cache_is_checked_for_the_chunk_only_and_the_first_request_to_run_always_gets_in():
    assert plan_step([0], [50], budget=0, free_slots=4, kv_free=40).admitted == ()
    assert plan_step([0], [50], budget=16, free_slots=4, kv_free=40).admitted == (15,)
    assert plan_step([], [50], budget=0, free_slots=4, kv_free=40).admitted == (50,)
    # a running request's chunk takes its KV cache before the waiting ones are looked at
    assert plan_step([30], [20], budget=0, free_slots=4, kv_free=40).admitted == ()


def test_the_queue_is_read_one_past_the_last_admitted_at_most():
    waiting = iter([5, 50, 7])
    assert plan_step([0], waiting, budget=0, free_slots=4, kv_free=20).admitted == (5,)
    assert next(waiting) == 7  # 50 was read and refused (head of line), 7 never


def test_budget_0_schedules_every_decode_and_every_whole_prompt():
    plan = plan_step([0, 0, 0], [100, 200], budget=0, free_slots=2, kv_free=10_000)
    assert plan == StepPlan(running=(1, 1, 1), admitted=(100, 200), batch_size=5, prefill_tokens=300)


# -- the engine, driven step by step (schedule + complete, no clock) --------------------------


def make_engine(**config: object) -> Engine:
    return Engine(SimConfig(**config), SimMetrics("sim-model", process_metrics=False))  # type: ignore[arg-type]


def request(rid: str, prompt: int, output: int) -> SimRequest:
    return SimRequest(rid, prompt, output, natural_stop=False)


def step(engine: Engine, now: float) -> StepPlan:
    scheduled, plan = engine.schedule(now)
    engine.complete(scheduled, now)
    return plan


def a_decode_then_a_long_prompt(budget: int) -> tuple[Engine, SimRequest, SimRequest]:
    """A 4-slot engine: ``short`` (4 prompt tokens) decoding after one step, ``long`` (40) just submitted."""
    engine = make_engine(max_num_seqs=4, max_num_batched_tokens=budget)
    short, long = request("short", 4, 50), request("long", 40, 3)
    engine.submit(short)
    step(engine, 1)
    engine.submit(long)
    return engine, short, long


def scrape(engine: Engine, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(engine.metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    raise KeyError(name)


async def test_a_long_prompt_is_prefilled_in_chunks_while_the_running_sequence_decodes_every_step():
    engine, short, long = a_decode_then_a_long_prompt(16)
    plans = [step(engine, t) for t in (2, 3, 4)]
    # 16 tokens a step, 1 for the decode: 15 + 15 + 10 = 40, ceil(40 / 15) = 3 steps
    assert [p.prefill_tokens for p in plans] == [15, 15, 10]
    assert [p.batch_size for p in plans] == [2, 2, 2]
    assert short.generated == 4  # one token every step
    assert long.generated == 1 and long.first_token_at == 4 and long.admitted_at == 2


async def test_a_partially_prefilled_request_samples_nothing_and_counts_as_running():
    engine, _, long = a_decode_then_a_long_prompt(16)
    step(engine, 2)
    assert long.generated == 0 and long.first_token_at is None and long.prefill_left == 25
    assert scrape(engine, "vllm:num_requests_running") == 2
    assert scrape(engine, "vllm:num_requests_waiting") == 0
    assert scrape(engine, "vllm:generation_tokens_total") == 2  # short's two tokens only


async def test_budget_0_prefills_the_whole_prompt_in_the_admitting_step_as_before():
    engine, short, long = a_decode_then_a_long_prompt(0)
    plan = step(engine, 2)
    assert plan == StepPlan(running=(1,), admitted=(40,), batch_size=2, prefill_tokens=40)
    assert long.first_token_at == 2 and short.generated == 2


async def test_a_budget_change_mid_prefill_applies_from_the_next_step():
    engine = make_engine(max_num_seqs=4, max_num_batched_tokens=16)
    long = request("long", 40, 3)
    engine.submit(long)
    step(engine, 1)
    assert long.prefill_left == 24
    engine.config.update({"max_num_batched_tokens": 0})
    assert step(engine, 2).prefill_tokens == 24
    assert long.first_token_at == 2 and long.generated == 1


async def test_a_preempted_partial_prefill_starts_its_prefill_again_and_everything_finishes():
    engine = make_engine(max_num_seqs=2, max_num_batched_tokens=8, kv_cache_tokens=20)
    small, big = request("small", 4, 20), request("big", 20, 2)
    engine.submit(small)
    engine.submit(big)
    step(engine, 1)  # small 4 (first token), big 4
    step(engine, 2)  # small 1, big 7
    step(engine, 3)  # small 1, big 7: 25 tokens > 20, the newest is preempted
    assert scrape(engine, "vllm:num_preemptions_total") == 1
    assert engine.running == [small] and engine.num_waiting() == 1 and big.generated == 0
    assert scrape(engine, "vllm:kv_cache_usage_perc") == pytest.approx(7 / 20)
    step(engine, 4)  # readmitted: its 20 tokens from the start, 7 of them now
    assert big.prefill_left == 13
    for t in range(5, 200):
        if small.finished and big.finished:
            break
        step(engine, t)
    assert (small.generated, big.generated) == (20, 2)
    assert small.finish_reason == big.finish_reason == "length"
    assert not engine.running and engine.kv_cache_usage() == 0


async def test_a_preempted_decoding_request_prefills_its_prompt_and_its_output_again():
    engine = make_engine(max_num_seqs=2, max_num_batched_tokens=8, kv_cache_tokens=24)
    first, second = request("first", 4, 20), request("second", 4, 20)
    engine.submit(first)
    engine.submit(second)
    for t in range(1, 10):  # both decode; after step 9: 2 * (4 + 9) = 26 tokens > 24
        step(engine, t)
    assert engine.running == [first] and second.generated == 9
    assert step(engine, 10).admitted == (7,)  # of 4 + 9 tokens to compute again
    assert second.prefill_left == 6 and second.generated == 9
    assert step(engine, 11).prefill_tokens == 6 and second.generated == 10


async def test_abort_of_a_partially_prefilled_request_frees_its_slot_and_kv_cache():
    engine = make_engine(max_num_seqs=4, max_num_batched_tokens=8)
    long = request("long", 30, 3)
    engine.submit(long)
    step(engine, 1)
    assert engine.running == [long] and engine.kv_cache_usage() > 0
    engine.abort(long)
    assert not engine.running and engine.kv_cache_usage() == 0
    assert long.finish_reason == "abort" and long.done is not None and long.done.done()
    assert scrape(engine, "vllm:request_success_total", finished_reason="abort") == 1
    step(engine, 2)  # nothing left to schedule
    assert long.generated == 0


# -- the engine's own loop --------------------------------------------------------------------


@pytest.mark.parametrize(("budget", "steps"), [(16, 3), (0, 1)])
async def test_engine_loop_gives_the_first_token_after_the_last_chunk(budget: int, steps: int):
    engine = make_engine(max_num_seqs=4, max_num_batched_tokens=budget)  # latencies 0: steps back to back
    short, long = request("short", 4, 30), request("long", 40, 2)
    engine.submit(short)
    engine.submit(long)
    engine.start()
    try:
        # step 1: short 4 (first token), long 12; then 1 + 15, then 1 + 13: long's first token
        while long.generated == 0:
            await long.next_tokens()
        assert (engine.steps, short.generated) == (steps, steps)
        assert long.done is not None and short.done is not None
        await long.done
        await short.done
    finally:
        await engine.stop()
    assert (short.generated, long.generated) == (30, 2)


# -- settings ---------------------------------------------------------------------------------


def test_max_num_batched_tokens_is_0_or_at_least_max_num_seqs_also_at_runtime():
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        SimConfig(max_num_batched_tokens=-1)
    with pytest.raises(ValueError, match="at least max_num_seqs"):
        SimConfig(max_num_seqs=4, max_num_batched_tokens=2)
    cfg = SimConfig(max_num_seqs=4)
    cfg.update({"max_num_batched_tokens": 64})
    with pytest.raises(ValueError):
        cfg.update({"max_num_batched_tokens": 3})
    assert cfg.max_num_batched_tokens == 64


def test_cli_flag_sets_the_budget():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args([])).max_num_batched_tokens == 0
    assert config_from_args(parser.parse_args(["--max-num-batched-tokens", "2048"])).max_num_batched_tokens == 2048
