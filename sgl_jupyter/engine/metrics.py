"""Prometheus metrics with SGLang's names, fed by engine events.

Each ``EngineMetrics`` owns its own ``CollectorRegistry`` (never the global one), so several engines,
servers or tests in one process never clash over metric names.

>>> metrics = EngineMetrics(model_name="SmolLM2")
>>> unsubscribe = metrics.attach(engine)        # engine.subscribe(metrics.observe)
>>> text = metrics.render()                     # Prometheus text format, e.g. for GET /metrics
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .events import FinishEvent, StepEvent, TokenEvent

# Buckets as SGLang's metrics collector uses them (seconds).
TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 120.0, 160.0)
ITL_BUCKETS = (0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08, 0.1, 0.2,
               0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0)
E2E_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 150.0,
               200.0, 250.0, 300.0, 350.0, 500.0, 1000.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST
_MAX_TRACKED = 10_000  # requests whose last token time we remember (for inter-token latency)


class EngineMetrics:
    """Counters, gauges and histograms of one engine. ``observe`` runs on the scheduler thread, so it
    only does O(1) work per event."""

    def __init__(self, model_name: str = "default", registry: Optional[CollectorRegistry] = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ["model_name"]
        reg = self.registry

        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, labels, registry=reg).labels(model_name)

        def gauge(name: str, doc: str) -> Any:
            return Gauge(name, doc, labels, registry=reg).labels(model_name)

        def histogram(name: str, doc: str, buckets: tuple) -> Any:
            return Histogram(name, doc, labels, buckets=buckets, registry=reg).labels(model_name)

        self.request_success = counter("sglang_request_success", "Requests that finished (stop or length).")
        self.request_aborted = counter("sglang_request_aborted", "Requests aborted (client gone, error, shutdown).")
        self.prompt_tokens = counter("sglang_prompt_tokens", "Prompt tokens of finished requests.")
        self.generation_tokens = counter("sglang_generation_tokens", "Generated tokens of finished requests.")
        self.cached_tokens = counter("sglang_cached_tokens", "Prompt tokens served from the prefix cache.")
        self.token_throughput = gauge("sglang_token_throughput", "Generated tokens per second (recent window).")
        self.num_running_reqs = gauge("sglang_num_running_reqs", "Requests in the running batch.")
        self.num_queue_reqs = gauge("sglang_num_queue_reqs", "Requests waiting for admission.")
        self.cache_hit_rate = gauge("sglang_cache_hit_rate", "Prefix-cache hit rate over prompt tokens.")
        self.token_usage = gauge("sglang_token_usage", "Fraction of KV slots held by running requests.")
        self.ttft = histogram("sglang_time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS)
        self.itl = histogram("sglang_inter_token_latency_seconds", "Time between two token deliveries.",
                             ITL_BUCKETS)
        self.e2e = histogram("sglang_e2e_request_latency_seconds", "Request latency, arrival to finish.",
                             E2E_BUCKETS)
        self._last_token_time: dict[str, float] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ feeding
    def attach(self, engine: Any) -> Callable[[], None]:
        """Subscribe to ``engine``'s events; returns the function that unsubscribes."""
        return engine.subscribe(self.observe)

    def observe(self, event: Any) -> None:
        if isinstance(event, TokenEvent):
            self._on_token(event)
        elif isinstance(event, StepEvent):
            self._on_step(event)
        elif isinstance(event, FinishEvent):
            self._on_finish(event)

    def _on_token(self, ev: TokenEvent) -> None:
        if not ev.token_ids:
            return
        with self._lock:
            last = self._last_token_time.get(ev.rid)
            if last is None and len(self._last_token_time) >= _MAX_TRACKED:
                self._last_token_time.clear()  # finish events were lost (engine reset): start over
            self._last_token_time[ev.rid] = ev.time
        if last is not None:
            self.itl.observe(max(ev.time - last, 0.0))

    def _on_step(self, ev: StepEvent) -> None:
        self.num_running_reqs.set(ev.running)
        self.num_queue_reqs.set(ev.queued)
        self.token_throughput.set(ev.tokens_per_s)
        self.cache_hit_rate.set(ev.cache_hit_rate)
        if ev.kv_total:
            self.token_usage.set(ev.kv_used / ev.kv_total)

    def _on_finish(self, ev: FinishEvent) -> None:
        with self._lock:
            self._last_token_time.pop(ev.rid, None)
        meta = ev.meta_info or {}
        reason = (meta.get("finish_reason") or {}).get("type")
        if reason == "abort":
            self.request_aborted.inc()
            return
        self.request_success.inc()
        self.prompt_tokens.inc(int(meta.get("prompt_tokens") or 0))
        self.generation_tokens.inc(int(meta.get("completion_tokens") or 0))
        self.cached_tokens.inc(int(meta.get("cached_tokens") or 0))
        if meta.get("ttft") is not None:
            self.ttft.observe(float(meta["ttft"]))
        if meta.get("e2e_latency") is not None:
            self.e2e.observe(float(meta["e2e_latency"]))

    def refresh(self, server_info: dict) -> None:
        """Set the gauges from ``engine.get_server_info()``: step events stop when the engine is idle,
        so a scrape must not show the last busy step's numbers forever."""
        self.num_running_reqs.set(server_info.get("num_running_reqs", 0))
        self.num_queue_reqs.set(server_info.get("num_queue_reqs", 0))
        self.token_throughput.set(server_info.get("token_throughput", 0.0))
        self.cache_hit_rate.set(server_info.get("cache_hit_rate", 0.0))
        kv = server_info.get("kv") or {}
        if kv.get("total"):
            self.token_usage.set(kv.get("used", 0) / kv["total"])

    # ------------------------------------------------------------------ reading
    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

    def value(self, name: str) -> float:
        """One sample's current value by its exposed name (e.g. ``sglang_request_success_total``); for
        widgets and tests."""
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == name:
                    return float(sample.value)
        raise KeyError(f"no metric sample named {name!r}")
