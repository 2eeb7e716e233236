"""The simulator's /metrics has vLLM's names, types and labels (engine="0", model_name=first served)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from vllm_sim.metrics import TTFT_BUCKETS

EXPECTED = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:num_requests_waiting_by_reason": "gauge",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:request_success": "counter",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:request_time_per_output_token_seconds": "histogram",
    "vllm:request_prefill_time_seconds": "histogram",
    "vllm:request_decode_time_seconds": "histogram",
}


def families(url: str) -> dict:
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def test_metrics_have_vllm_names_types_and_engine_model_labels(sim_factory):
    sim = sim_factory(served_model_names=["first", "second"])
    httpx.post(
        sim.url + "/v1/chat/completions", json={"model": "second", "messages": [{"role": "user", "content": "hi"}]}
    )
    found = families(sim.url)
    for name, kind in EXPECTED.items():
        assert found[name].type == kind, name
        for sample in found[name].samples:
            assert sample.labels["engine"] == "0" and sample.labels["model_name"] == "first", sample
    assert "vllm:gpu_cache_usage_perc" not in found and "vllm:time_per_output_token_seconds" not in found


def test_request_success_uses_finished_reason_label_with_all_five_reasons(sim):
    found = families(sim.url)
    reasons = {s.labels["finished_reason"] for s in found["vllm:request_success"].samples if s.name.endswith("_total")}
    assert reasons == {"stop", "length", "abort", "error", "repetition"}
    by_reason = {s.labels["reason"] for s in found["vllm:num_requests_waiting_by_reason"].samples}
    assert by_reason == {"capacity", "deferred"}


def test_counters_are_exposed_with_total_suffix_and_count_tokens(sim):
    httpx.post(sim.url + "/v1/completions", json={"prompt": "x" * 40, "max_tokens": 3})
    text = httpx.get(sim.url + "/metrics").text
    assert 'vllm:prompt_tokens_total{engine="0",model_name="sim-model"} 10.0' in text
    assert 'vllm:generation_tokens_total{engine="0",model_name="sim-model"} 3.0' in text
    assert 'vllm:num_requests_running{engine="0",model_name="sim-model"} 0.0' in text


def test_ttft_histogram_has_vllm_buckets(sim):
    ttft = families(sim.url)["vllm:time_to_first_token_seconds"]
    bounds = [float(s.labels["le"]) for s in ttft.samples if s.name.endswith("_bucket")]
    assert bounds == [*TTFT_BUCKETS, float("inf")]
    assert TTFT_BUCKETS[0] == 0.001 and TTFT_BUCKETS[-1] == 2560.0


def test_each_simulator_has_its_own_registry(sim_factory):
    a, b = sim_factory(), sim_factory()
    httpx.post(a.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert 'vllm:generation_tokens_total{engine="0",model_name="sim-model"} 0.0' in httpx.get(b.url + "/metrics").text
