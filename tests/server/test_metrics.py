"""/metrics in Prometheus format with SGLang's names, fed by engine events; one registry per collector."""
from __future__ import annotations

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from sgl_jupyter.engine.metrics import EngineMetrics

from .conftest import wait_idle

REQUIRED = ("sglang_request_success", "sglang_token_throughput", "sglang_prompt_tokens", "sglang_generation_tokens",
            "sglang_time_to_first_token_seconds", "sglang_inter_token_latency_seconds",
            "sglang_e2e_request_latency_seconds", "sglang_num_running_reqs", "sglang_num_queue_reqs",
            "sglang_cache_hit_rate")


def scrape(client) -> dict[str, float]:
    res = client.get("/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(res.text):
        for sample in family.samples:
            values[sample.name] = sample.value
    return values


def test_metrics_have_sglangs_names_and_count_requests(client, engine):
    before = scrape(client)
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    for i in range(3):
        u = client.post("/v1/completions", json={"prompt": f"Count {i}:", "max_tokens": 5, "temperature": 0,
                                                 "ignore_eos": True}).json()["usage"]
        for k in usage:
            usage[k] += u[k]
    wait_idle(engine)
    after = scrape(client)
    for name in REQUIRED:
        assert any(k.startswith(name) for k in after), name

    def delta(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert delta("sglang_request_success_total") == 3
    assert delta("sglang_prompt_tokens_total") == usage["prompt_tokens"]
    assert delta("sglang_generation_tokens_total") == usage["completion_tokens"] == 15
    assert delta("sglang_time_to_first_token_seconds_count") == 3
    assert delta("sglang_e2e_request_latency_seconds_count") == 3
    assert delta("sglang_inter_token_latency_seconds_count") >= 3 * 3  # 4 gaps a request, jump-forward aside
    assert after["sglang_num_running_reqs"] == 0 and after["sglang_num_queue_reqs"] == 0
    assert 0.0 <= after["sglang_cache_hit_rate"] <= 1.0


def test_collectors_use_their_own_registry(engine):
    a, b = EngineMetrics("a"), EngineMetrics("b")  # same metric names: no clash
    unsubscribe = a.attach(engine)
    try:
        engine.generate("Hello", {"max_new_tokens": 3, "temperature": 0, "ignore_eos": True})
    finally:
        unsubscribe()
    assert a.value("sglang_request_success_total") == 1
    assert a.value("sglang_generation_tokens_total") == 3
    assert b.value("sglang_request_success_total") == 0
    engine.generate("Hello", {"max_new_tokens": 2, "temperature": 0})
    assert a.value("sglang_request_success_total") == 1  # unsubscribed: no longer counting
    global_names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(n.startswith("sglang_") for n in global_names)
