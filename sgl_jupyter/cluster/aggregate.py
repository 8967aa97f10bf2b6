"""What the router answers for all replicas at once: /get_server_info and /metrics merged from each
replica's own answer, so a client written for one server (``RuntimeEndpoint``, ``%sgl_connect``,
Prometheus scrapers) reads the cluster as one bigger server, with per-replica detail added."""
from __future__ import annotations

import re
from typing import Any, Optional, Sequence

# Counters and capacities that add up across replicas; ratios are recomputed or averaged instead.
SUMMED = ("num_running_reqs", "num_queue_reqs", "token_throughput", "num_finished_reqs", "num_retracted_reqs",
          "prompt_tokens_total", "generation_tokens_total", "cached_tokens_total", "extend_tokens_total",
          "forward_calls", "max_total_num_tokens", "max_running_requests")
SUMMED_DICTS = ("kv", "http_admission")
AVERAGED_GAUGES = frozenset({"sglang_cache_hit_rate", "sglang_token_usage"})
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{.*\})?)\s+(\S+)$")


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, bool) or isinstance(b, bool):
        return a
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _add(a[k], b[k]) if k in b else a[k] for k in a}
    return a


def merge_server_info(infos: Sequence[Optional[dict]], replicas: list[dict], router: dict) -> dict:
    """The first live replica's info with load and token counters summed over all live ones;
    ``replicas`` (one entry per replica, live or not) and ``router`` (policy, counters) added."""
    live = [i for i in infos if i is not None]
    merged: dict = dict(live[0]) if live else {}
    for info in live[1:]:
        for key in SUMMED + SUMMED_DICTS:
            if key in merged and key in info:
                merged[key] = _add(merged[key], info[key])
    if merged.get("prompt_tokens_total"):
        merged["cache_hit_rate"] = merged.get("cached_tokens_total", 0) / merged["prompt_tokens_total"]
    merged["replicas"] = replicas
    merged["router"] = router
    merged["num_replicas"] = len(replicas)
    return merged


def _parse(text: str) -> tuple[list[str], dict[str, float], list[str]]:
    """(comment lines, sample values by series, series order) of one Prometheus text exposition."""
    comments, values, order = [], {}, []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            comments.append(line)
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        series, value = m.group(1), m.group(2)
        try:
            values[series] = float(value)
        except ValueError:
            continue
        order.append(series)
    return comments, values, order


def _fmt(v: float) -> str:
    return repr(float(v)) if v != int(v) or abs(v) >= 1e15 else f"{float(v):.1f}"


def merge_metrics(texts: Sequence[str]) -> str:
    """Series summed over replicas (ratio gauges averaged); HELP/TYPE lines from the first text.
    The layout follows the first text; series only others have are appended."""
    if not texts:
        return ""
    parsed = [_parse(t) for t in texts]
    out: list[str] = []
    seen: set[str] = set()
    by_name: dict[str, list[str]] = {}
    for _, values, order in parsed:
        for series in order:
            if series not in seen:
                seen.add(series)
                by_name.setdefault(series.split("{", 1)[0], []).append(series)
    done: set[str] = set()

    def emit(series: str) -> None:
        present = [values[series] for _, values, _ in parsed if series in values]
        name = series.split("{", 1)[0]
        if name.endswith("_created"):  # creation timestamps: the earliest, not a sum
            total = min(present)
        elif name in AVERAGED_GAUGES:
            total = sum(present) / len(present)
        else:
            total = sum(present)
        out.append(f"{series} {_fmt(total)}")
        done.add(series)

    for line in parsed[0][0]:
        out.append(line)
        if line.startswith("# TYPE "):
            base = line.split()[2]
            for name in (base, base + "_total", base + "_created", base + "_bucket", base + "_count", base + "_sum"):
                for series in by_name.get(name, []):
                    if series not in done:
                        emit(series)
    for series in seen - done:
        emit(series)
    return "\n".join(out) + "\n"


def router_metrics(policy: str, replicas: Sequence[dict], imbalance_fallbacks: int) -> str:
    """The router's own counters in Prometheus text: routing decisions per replica and their outcome."""
    lines = [
        "# HELP sgl_router_requests_total Requests the router sent to each replica.",
        "# TYPE sgl_router_requests_total counter",
        *(f'sgl_router_requests_total{{replica="{r["index"]}",policy="{policy}"}} {r["routed_requests"]}'
          for r in replicas),
        "# HELP sgl_router_matched_prefix_chars_total Prompt characters found in the chosen replica's "
        "approximate prefix tree (cache-aware routing).",
        "# TYPE sgl_router_matched_prefix_chars_total counter",
        *(f'sgl_router_matched_prefix_chars_total{{replica="{r["index"]}"}} {r["matched_prefix_chars"]}'
          for r in replicas),
        "# HELP sgl_router_imbalance_fallbacks_total Cache-aware decisions overridden by load imbalance.",
        "# TYPE sgl_router_imbalance_fallbacks_total counter",
        f"sgl_router_imbalance_fallbacks_total {imbalance_fallbacks}",
        "# HELP sgl_router_replica_failures_total Requests that met a dead or unreachable replica.",
        "# TYPE sgl_router_replica_failures_total counter",
        *(f'sgl_router_replica_failures_total{{replica="{r["index"]}"}} {r["failures"]}' for r in replicas),
        "# HELP sgl_router_in_flight Requests in flight per replica, as the router counts them.",
        "# TYPE sgl_router_in_flight gauge",
        *(f'sgl_router_in_flight{{replica="{r["index"]}"}} {r["in_flight"]}' for r in replicas),
        "# HELP sgl_router_replica_up 1 while the router sends requests to the replica.",
        "# TYPE sgl_router_replica_up gauge",
        *(f'sgl_router_replica_up{{replica="{r["index"]}"}} {int(r["healthy"])}' for r in replicas),
    ]
    return "\n".join(lines) + "\n"
