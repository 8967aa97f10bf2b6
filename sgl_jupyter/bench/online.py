"""Online load test through the HTTP server, like SGLang's ``bench_serving``
(``python -m sgl_jupyter.bench serving --request-rates 8,16,inf``).

One engine serves in process; first the ShareGPT-like requests go through ``Engine.generate`` all at once
(the in-process figure), then, per rate, a client in a separate process (so its JSON parsing does not take
the server's GIL) sends the same requests to the native ``/generate`` endpoint, streamed, at Poisson
arrival times (``inf``: all at once). Per rate: output tok/s (and as a fraction of in-process), TTFT
p50/p99, the gap between stream chunks (inter-token latency) p50/p99/max, and per-request TPOT.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from typing import Optional

import pandas as pd

from .sharegpt import ShareGPTWorkload, run_engine, sharegpt_workload


def _quantile(xs: list[float], q: float) -> Optional[float]:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


async def _one(client, url: str, ids: list[int], max_new: int, delay: float, t_start: float) -> dict:
    await asyncio.sleep(max(0.0, t_start + delay - time.perf_counter()))
    sent = time.perf_counter()
    body = {"input_ids": ids, "stream": True,
            "sampling_params": {"max_new_tokens": max_new, "ignore_eos": True, "temperature": 0.0}}
    arrivals, tokens = [], 0
    async with client.stream("POST", f"{url}/generate", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            n = json.loads(line[6:])["meta_info"]["completion_tokens"]
            if n > tokens:
                arrivals.append(time.perf_counter())
                tokens = n
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    ttft = arrivals[0] - sent if arrivals else None
    tpot = (arrivals[-1] - arrivals[0]) / (tokens - 1) if tokens > 1 and arrivals else None
    return {"sent": sent - t_start, "ttft_s": ttft, "tokens": tokens, "gaps": gaps, "tpot_s": tpot,
            "e2e_s": (arrivals[-1] if arrivals else time.perf_counter()) - sent}


async def _client(url: str, work: dict, rate: float, seed: int) -> dict:
    import httpx

    rng = random.Random(seed)
    n = len(work["input_ids"])
    delays, t = [], 0.0
    for _ in range(n):
        delays.append(t)
        if math.isfinite(rate):
            t += rng.expovariate(rate)
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600.0), limits=limits) as client:
        t_start = time.perf_counter()
        rows = await asyncio.gather(*[_one(client, url, ids, m, d, t_start)
                                      for ids, m, d in zip(work["input_ids"], work["output_lens"], delays)])
        wall = time.perf_counter() - t_start
    return {"wall_s": wall, "rows": rows}


def client_main(argv: list[str]) -> None:
    """``python -m sgl_jupyter.bench.online URL WORK.json RATE SEED OUT.json`` (the load generator process)."""
    url, work_path, rate, seed, out = argv
    work = json.loads(open(work_path).read())
    res = asyncio.run(_client(url, work, float(rate), int(seed)))
    open(out, "w").write(json.dumps(res))


def summarize(res: dict, rate: float, in_process_tok_s: Optional[float]) -> dict:
    rows = res["rows"]
    tokens = sum(r["tokens"] for r in rows)
    gaps = [g for r in rows for g in r["gaps"]]
    ttfts = [r["ttft_s"] for r in rows if r["ttft_s"] is not None]
    tpots = [r["tpot_s"] for r in rows if r["tpot_s"] is not None]
    out_tok_s = tokens / res["wall_s"]
    return {"bench": "serving", "request_rate": rate, "requests": len(rows), "output_tokens": tokens,
            "seconds": res["wall_s"], "output_tok_per_s": out_tok_s,
            "vs_in_process": out_tok_s / in_process_tok_s if in_process_tok_s else None,
            "ttft_p50_s": _quantile(ttfts, 0.5), "ttft_p99_s": _quantile(ttfts, 0.99),
            "itl_p50_s": _quantile(gaps, 0.5), "itl_p99_s": _quantile(gaps, 0.99),
            "itl_max_s": max(gaps) if gaps else None, "tpot_p50_s": _quantile(tpots, 0.5),
            "tpot_p99_s": _quantile(tpots, 0.99)}


def load_at_rates(url: str, work: ShareGPTWorkload, rates: list[float], in_process_tok_s: Optional[float] = None,
                  seed: int = 0, timeout_s: float = 3600.0) -> list[dict]:
    """One client process per rate, against the server at ``url``."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        wpath = os.path.join(tmp, "work.json")
        with open(wpath, "w") as f:
            json.dump({"input_ids": work.input_ids, "output_lens": work.output_lens}, f)
        for rate in rates:
            out = os.path.join(tmp, f"rate_{rate}.json")
            subprocess.run([sys.executable, "-m", "sgl_jupyter.bench.online", url, wpath, str(rate), str(seed), out],
                           check=True, timeout=timeout_s)
            with open(out) as f:
                rows.append(summarize(json.load(f), rate, in_process_tok_s))
    return rows


def benchmark(engine, work: ShareGPTWorkload, rates: list[float], port: int = 0) -> pd.DataFrame:
    """The in-process figure, then the same requests through the server at each rate."""
    from sgl_jupyter.server.thread import serve_in_thread

    engine.generate(input_ids=work.input_ids[:4], sampling_params={"max_new_tokens": 4, "ignore_eos": True})
    base = run_engine(engine, work)
    base.pop("_outputs")
    rows = [{"bench": "in-process", "request_rate": float("inf"), **base}]
    server = serve_in_thread(engine, port=port or _free_port())
    try:
        engine.flush_cache()
        rows += load_at_rates(server.url, work, rates, base["output_tok_per_s"])
    finally:
        server.stop()
    return pd.DataFrame(rows)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args) -> pd.DataFrame:
    from sgl_jupyter import Engine

    rates = [float(r) for r in args.request_rates.split(",")]
    kwargs = {k: getattr(args, k) for k in ("device", "dtype", "load_format") if getattr(args, k, None)}
    kwargs.update(getattr(args, "engine_kwargs", None) or {})
    with Engine(args.model_path, **kwargs) as engine:
        work = sharegpt_workload(args.num_requests, engine.vocab_size, max_input=getattr(args, "max_input", None),
                                 max_output=getattr(args, "max_output", None))
        return benchmark(engine, work, rates)


if __name__ == "__main__":
    client_main(sys.argv[1:])
