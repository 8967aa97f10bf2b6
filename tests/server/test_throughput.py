"""Serving overhead: 32 concurrent clients over HTTP vs the same 32 requests submitted in-process.

The acceptance target is HTTP within 15% of in-process. On this shared 2-core CPU other work moves both
numbers, so the test runs the two modes interleaved (best of two each), prints them, and asserts a
generous bound; the report quotes the measured numbers."""
from __future__ import annotations

import asyncio
import threading
import time

import httpx

CLIENTS = 32
NEW_TOKENS = 16
PROMPTS = [f"Request {i}: write a short sentence about the number {i}." for i in range(CLIENTS)]
PARAMS = {"max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True}


def in_process_tokens_per_s(engine) -> float:
    """32 caller threads, each submitting one request, as 32 notebook cells or handlers would."""
    out: list[int] = [0] * CLIENTS

    def client(i: int) -> None:
        out[i] = engine.generate(PROMPTS[i], PARAMS)["meta_info"]["completion_tokens"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(out) / (time.perf_counter() - t0)


def http_tokens_per_s(url: str) -> float:
    """32 concurrent HTTP clients on /v1/completions with the same requests."""
    async def main() -> float:
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=64)) as ac:
            async def one(i: int) -> int:
                res = await ac.post("/v1/completions", json={
                    "prompt": PROMPTS[i], "max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True})
                res.raise_for_status()
                return res.json()["usage"]["completion_tokens"]

            t0 = time.perf_counter()
            tokens = await asyncio.gather(*[one(i) for i in range(CLIENTS)])
            return sum(tokens) / (time.perf_counter() - t0)

    return asyncio.run(main())


def test_http_throughput_is_close_to_in_process(engine, url, capsys):
    in_process_tokens_per_s(engine)  # warm-up: both modes then see the same prefix-cache state
    inproc, http = [], []
    for _ in range(2):
        inproc.append(in_process_tokens_per_s(engine))
        http.append(http_tokens_per_s(url))
    best_in, best_http = max(inproc), max(http)
    ratio = best_http / best_in
    with capsys.disabled():
        print(f"\n[throughput] {CLIENTS} clients x {NEW_TOKENS} tokens: in-process {best_in:.1f} tok/s "
              f"(runs {', '.join(f'{x:.1f}' for x in inproc)}), HTTP {best_http:.1f} tok/s "
              f"(runs {', '.join(f'{x:.1f}' for x in http)}), HTTP/in-process = {ratio:.2f}")
    assert ratio >= 0.70, (inproc, http)
