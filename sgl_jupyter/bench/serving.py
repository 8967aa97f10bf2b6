"""Load against a running server and its ``/metrics`` read back (``python -m sgl_jupyter.bench serving
--url URL``): ``num_requests`` streamed chat completions, ``concurrency`` at a time, timed by the client
(TTFT = first content chunk), then the server's Prometheus histograms as DataFrames."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import pandas as pd

from .workload import mixed_requests


def _stream_one(client, base_url: str, model: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    ttft, chunks, usage = None, 0, {}
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                usage = data["usage"]
            if any((c.get("delta") or {}).get("content") for c in data.get("choices", [])):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
    return {"ttft_s": ttft, "e2e_s": time.perf_counter() - t0, "chunks": chunks,
            "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens")}


def load_test(base_url: str, num_requests: int = 16, concurrency: int = 4, max_tokens: int = 32,
              api_key: Optional[str] = None, progress: bool = True) -> pd.DataFrame:
    """One row per request: ttft_s, e2e_s, prompt/completion tokens, start (s since the first)."""
    import httpx
    from tqdm.auto import tqdm

    base_url = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    prompts = [r.prompt for r in mixed_requests(num_requests, max_in=6)]
    rows: list[dict] = []
    lock = threading.Lock()
    bar = tqdm(total=num_requests, desc=f"{concurrency} concurrent clients", disable=not progress)
    with httpx.Client(headers=headers, timeout=600) as client:
        model = client.get(f"{base_url}/v1/models").json()["data"][0]["id"]
        t_start = time.perf_counter()

        def one(i: int) -> None:
            start = time.perf_counter() - t_start
            r = _stream_one(client, base_url, model, prompts[i], max_tokens)
            with lock:
                rows.append({"request": i, "start": start, **r})
            bar.update(1)

        try:
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(one, range(num_requests)))
        finally:
            bar.close()
        wall = time.perf_counter() - t_start
    df = pd.DataFrame(rows).sort_values("request").reset_index(drop=True)
    df.attrs.update(wall_s=wall, req_per_s=num_requests / wall,
                    tok_per_s=df.completion_tokens.fillna(0).sum() / wall)
    return df


def scrape_metrics(base_url: str, api_key: Optional[str] = None) -> pd.DataFrame:
    """``GET /metrics`` as a DataFrame: one row per sample (name, le for histogram buckets, value)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    text = httpx.get(f"{base_url.rstrip('/')}/metrics", headers=headers, timeout=30).text
    rows = [{"family": fam.name, "type": fam.type, "name": s.name, "le": s.labels.get("le"), "value": s.value}
            for fam in text_string_to_metric_families(text) for s in fam.samples]
    return pd.DataFrame(rows)


def histogram(metrics: pd.DataFrame, family: str) -> pd.DataFrame:
    """The cumulative buckets of one histogram (``le`` as a float, +Inf last) with the count per bucket."""
    b = metrics[(metrics.family == family) & metrics.name.str.endswith("_bucket")].copy()
    b["le"] = b["le"].astype(float)
    b = b.sort_values("le").reset_index(drop=True)
    b["in_bucket"] = b.value.diff().fillna(b.value)
    return b[["le", "value", "in_bucket"]].rename(columns={"value": "cumulative"})


def plot(df: pd.DataFrame, metrics: Optional[pd.DataFrame] = None):
    """Client-side TTFT and latency per request; with ``metrics``, the server's TTFT and e2e histograms."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if metrics is not None else 1, figsize=(11 if metrics is not None else 6, 3.6),
                             squeeze=False)
    ax = axes[0][0]
    ax.scatter(df.start, df.e2e_s, label="end-to-end", s=18)
    ax.scatter(df.start, df.ttft_s, label="TTFT", s=18)
    ax.set(xlabel="request sent at (s)", ylabel="seconds", title="Client view, per request")
    ax.legend()
    ax.grid(alpha=0.3)
    if metrics is not None:
        ax = axes[0][1]
        for family, label in (("sglang_time_to_first_token_seconds", "TTFT"),
                              ("sglang_e2e_request_latency_seconds", "end-to-end")):
            h = histogram(metrics, family)
            h = h[h["le"] != float("inf")]
            if not h.empty and h.cumulative.max() > 0:
                ax.step(h["le"], h.cumulative, where="post", label=label)
        ax.set_xscale("log")
        ax.set(xlabel="seconds (bucket upper bound)", ylabel="requests (cumulative)",
               title="Server view: /metrics histograms")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def run_cli(args) -> pd.DataFrame:
    """Entry for ``python -m sgl_jupyter.bench serving --url URL`` (closed loop against a running server), or
    ``--request-rates R1,R2`` (Poisson arrivals, ShareGPT-like lengths, engine and server started here: online.py)."""
    if getattr(args, "request_rates", None):
        from .online import run_cli as online

        return online(args)
    if not getattr(args, "url", None):
        raise SystemExit("serving needs --url of a running server (python -m sgl_jupyter.launch_server ...)")
    return load_test(args.url, num_requests=args.num_requests)
