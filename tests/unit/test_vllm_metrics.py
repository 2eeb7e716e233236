"""Parsing vLLM's /metrics text (as a real vLLM 0.32 prints it) and the token rate."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from consumer.vllm_metrics import VllmScrape, tokens_per_second
from devstack.inprocess import SimServer
from vllm_sim import SimConfig

SCRAPE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smollm2"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="smollm2"} 2.0
# HELP vllm:num_requests_waiting_by_reason Number of requests waiting.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="smollm2",reason="capacity"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="smollm2"} 0.25
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="smollm2"} 1234.0
# HELP vllm:generation_tokens_created Number of generation tokens processed.
# TYPE vllm:generation_tokens_created gauge
vllm:generation_tokens_created{engine="0",model_name="smollm2"} 1.7e+09
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="smollm2"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="smollm2"} 5.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="smollm2"} 5.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="smollm2"} 1.5
"""


def test_parses_the_gauges_and_counter_the_consumer_reads():
    s = VllmScrape.parse(SCRAPE, at=10.0)
    assert (s.running, s.waiting, s.kv_cache_usage, s.generation_tokens) == (3.0, 2.0, 0.25, 1234.0)


def test_sums_engines_and_takes_the_fullest_kv_cache():
    two = SCRAPE + SCRAPE.replace('engine="0"', 'engine="1"').replace(" 0.25", " 0.75").replace("# ", "#x ")
    two = "\n".join(line for line in two.splitlines() if not line.startswith("#x"))
    s = VllmScrape.parse(two, at=0)
    assert s.running == 6.0
    assert s.kv_cache_usage == 0.75


def test_missing_metrics_are_none_not_zero():
    s = VllmScrape.parse("# nothing here\n", at=0)
    assert s.running is None and s.generation_tokens is None


def test_token_rate_from_two_scrapes_and_none_on_counter_reset():
    a = VllmScrape(at=0.0, running=1, waiting=0, kv_cache_usage=0, generation_tokens=100)
    b = VllmScrape(at=2.0, running=1, waiting=0, kv_cache_usage=0, generation_tokens=160)
    assert tokens_per_second(a, b) == 30.0
    assert tokens_per_second(b, a) is None
    assert tokens_per_second(None, b) is None


def test_fast_parser_agrees_with_the_reference_parser_on_a_real_simulator_scrape():
    with SimServer(SimConfig(model="m", itl_base=0.001)).start() as sim:
        httpx.post(sim.url + "/v1/completions", json={"model": "m", "prompt": "hello", "max_tokens": 5})
        text = httpx.get(sim.url + "/metrics").text
    ours = VllmScrape.parse(text, at=0)
    ref = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert ours.generation_tokens == ref["vllm:generation_tokens_total"] == 5
    assert ours.running == ref["vllm:num_requests_running"]
    assert ours.kv_cache_usage == ref["vllm:kv_cache_usage_perc"]


def test_label_values_with_spaces_and_braces_do_not_confuse_the_parser():
    text = 'vllm:num_requests_running{engine="0",model_name="a b {c}"} 7.0 1700000000000\n'
    assert VllmScrape.parse(text, at=0).running == 7.0
