"""``%sgl_stats``'s table: the backend's counters and the latencies of the requests this kernel saw. With an
in-process engine its tokens/s rows are the chart's (the engine's timeline: its last point and its peak)."""
from __future__ import annotations

import statistics
from typing import Any

_COUNTERS = [
    ("token_throughput", "tokens/s (last 5 s)"),
    ("num_running_reqs", "running requests"),
    ("num_queue_reqs", "queued requests"),
    ("num_finished_reqs", "finished requests"),
    ("num_retracted_reqs", "retracted requests"),
    ("prompt_tokens_total", "prompt tokens"),
    ("generation_tokens_total", "generated tokens"),
    ("cached_tokens_total", "prompt tokens from the cache"),
    ("cache_hit_rate", "cache hit rate"),
    ("forward_calls", "model forward calls"),
    ("max_total_num_tokens", "KV capacity (tokens)"),
]


def _quantiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {}
    return {"p50": statistics.median(values), "p90": values[min(len(values) - 1, int(0.9 * len(values)))],
            "max": values[-1]}


def metrics_frame(session: Any):
    """A DataFrame indexed by metric with one `value` column (numbers as the engine reports them)."""
    import pandas as pd

    info = session.server_info() or {}
    rows: list[tuple[str, Any]] = []
    points = session.engine.timeline.points() if session.engine is not None else []
    for key, label in _COUNTERS:
        if key == "token_throughput" and points:  # the chart's numbers: its last point and its peak
            rows.append(("tokens/s now", points[-1]["tokens_per_s"]))
            rows.append(("tokens/s, peak since load", max(p["tokens_per_s"] for p in points)))
        elif key in info:
            rows.append((label, info[key]))
    kv = info.get("kv") or {}
    for key in ("used", "evictable", "free"):
        if key in kv:
            rows.append((f"KV tokens {key}", kv[key]))
    metas = list(session.history)
    for chart in session.charts:
        feed = getattr(chart, "feed", None)
        if feed is not None:
            metas.extend(m for m in list(feed.finished) if isinstance(m, dict))
    seen, unique = set(), []
    for m in metas:  # a %%sgl gen seen by a live chart too counts once
        if m.get("id") not in seen:
            seen.add(m.get("id"))
            unique.append(m)
    rows.append(("requests observed by this kernel", len(unique)))
    for key, label in (("e2e_latency", "end-to-end latency (s)"), ("ttft", "time to first token (s)")):
        for q, v in _quantiles([float(m[key]) for m in unique if m.get(key) is not None]).items():
            rows.append((f"{label} {q}", v))
    # object dtype: counters stay ints (16384, not 16384.000000 as one float column would print them)
    values = [round(v, 4) if isinstance(v, float) else v for _, v in rows]
    index = pd.Index([k for k, _ in rows], name="metric")
    frame = pd.DataFrame({"value": pd.Series(values, index=index, dtype=object)})
    return frame
