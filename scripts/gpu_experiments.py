"""GPU diagnostics behind the bs=1 decode work (a developer's tool, not a benchmark): where a multi-step
decode's host time goes (``timeline_N``: N steps per launch; ``timeline_4_cublas``: without the Triton GEMV),
one-row GEMV variants against cuBLAS/cuBLASLt (``gemv``), and the sampler's kept sets (``sampler``).
    python scripts/gpu_experiments.py [timeline_4 timeline_16 gemv sampler ...]   (JSON under $OUT)"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

import torch

from sgl_jupyter.bench.latency import cuda_time_ms as cuda_time

OUT = Path(os.environ.get("OUT", "artifacts/gpu"))
OUT.mkdir(parents=True, exist_ok=True)
res: dict = {}


def timeline(steps: int, gemv_on: bool = True):
    from sgl_jupyter.kernels import gemv
    gemv.ENABLED = gemv_on
    from sgl_jupyter import Engine
    from sgl_jupyter.bench.latency import resolve_model_path
    eng = Engine(resolve_model_path("llama3-8b"), load_format="dummy", device="cuda", max_total_tokens=8192,
                 max_running_requests=8, cuda_graph_max_bs=8, num_continuous_decode_steps=steps,
                 tokenizer_path=os.environ.get("SGL_TOK"))
    sch, runner = eng.scheduler, eng.runner
    acc = defaultdict(float)
    cnt = defaultdict(int)

    def wrap(obj, name, key):
        orig = getattr(obj, name)

        def f(*a, **k):
            t = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                acc[key] += time.perf_counter() - t
                cnt[key] += 1
        setattr(obj, name, f)

    wrap(sch, "step", "step")
    wrap(sch, "_commit", "commit")
    wrap(sch, "_schedule_decode", "schedule_decode")
    wrap(sch, "_schedule_extend", "schedule_extend")
    wrap(sch, "_multi_step_ok", "multi_step_ok")
    wrap(runner.graphs, "launch_multi_step", "launch_multi_step")
    wrap(runner, "forward", "forward")
    ids = list(range(1000, 1128))
    out = {}
    try:
        p = {"max_new_tokens": 128, "temperature": 0, "ignore_eos": True}
        eng.generate(input_ids=ids, sampling_params={**p, "max_new_tokens": 8})
        best = None
        for _ in range(3):
            eng.flush_cache()
            acc.clear(); cnt.clear()
            t0 = time.perf_counter()
            r = eng.generate(input_ids=ids, sampling_params=p)
            tot = time.perf_counter() - t0
            ttft = r["meta_info"]["ttft"]
            tps = 127 / (tot - ttft)
            if best is None or tps > best["tok_per_s"]:
                best = {"tok_per_s": tps, "overlapped": sch.overlapped_launches, "total_s": tot, "ttft_s": ttft,
                        **{f"{k}_ms_total": v * 1e3 for k, v in acc.items()}, **{f"{k}_n": v for k, v in cnt.items()}}
        out["gen"] = best
        g = runner.graphs
        if steps > 1 and getattr(g, "ms_graphs", None):
            out["ms_graph_replay_ms"] = cuda_time(g.ms_graphs[1].replay, 20)
        out["graph_replay_ms"] = cuda_time(g.graphs[1].replay, 20)
    finally:
        eng.shutdown()
        torch.cuda.empty_cache()
    return out


def gemv_variants():
    import triton
    import triton.language as tl

    @triton.jit
    def gemv(W, X, Y, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid = tl.program_id(0)
        rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            w = tl.load(W + rn[:, None] * K + rk[None, :], mask=(rn[:, None] < N) & (rk[None, :] < K), other=0.0)
            x = tl.load(X + rk, mask=rk < K, other=0.0)
            acc += tl.sum(w.to(tl.float32) * x[None, :].to(tl.float32), 1)
        tl.store(Y + rn, acc.to(Y.dtype.element_ty), mask=rn < N)

    out = {}
    for N, K in ((4096, 4096), (6144, 4096), (4096, 14336), (28672, 4096)):
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
        nbytes = w.numel() * 2
        tb = lambda ms: round(nbytes / (ms / 1e3) / 1e12, 3)  # noqa
        key = f"{N}x{K}"
        for lib in ("cublaslt", "cublas"):
            torch.backends.cuda.preferred_blas_library(lib)
            out[f"{key}_linear_{lib}"] = tb(cuda_time(lambda: torch.nn.functional.linear(x, w), 200))
            x8 = torch.randn(8, K, device="cuda", dtype=torch.bfloat16)
            out[f"{key}_linear_M8_{lib}"] = tb(cuda_time(lambda: torch.nn.functional.linear(x8, w), 200))
            out[f"{key}_mv_{lib}"] = tb(cuda_time(lambda: torch.mv(w, x[0]), 200))
        torch.backends.cuda.preferred_blas_library("cublaslt")
        y = torch.empty(N, device="cuda", dtype=torch.bfloat16)
        ref = torch.nn.functional.linear(x, w)[0].float()
        for bn, bk, nw in ((8, 512, 4), (16, 256, 4), (4, 1024, 4), (8, 1024, 8), (16, 512, 8), (32, 256, 8), (2, 2048, 4)):
            try:
                fn = lambda: gemv[(triton.cdiv(N, bn),)](w, x, y, N, K, BLOCK_N=bn, BLOCK_K=bk, num_warps=nw)  # noqa
                ms = cuda_time(fn, 200)
                err = (y.float() - ref).abs().max().item()
                out[f"{key}_triton_{bn}_{bk}_{nw}"] = (tb(ms), round(err, 3))
            except Exception as e:  # noqa
                out[f"{key}_triton_{bn}_{bk}_{nw}"] = repr(e)[:200]
        del w
    return out


def offline_anatomy():
    """The offline bench's engine run (512 mixed requests, Llama-3-8B shape), step by step: how much wall
    time prefill and decode take, at which batch sizes, how many launches overlapped; then the same
    requests under older limits (prefill chunks of 2048, 256 running) to see what each is worth."""
    from sgl_jupyter import Engine
    from sgl_jupyter.bench.latency import resolve_model_path
    from sgl_jupyter.bench.workload import mixed_requests

    t0 = time.perf_counter()
    eng = Engine(resolve_model_path("llama3-8b"), load_format="dummy", device="cuda", mem_fraction_static=0.5,
                 tokenizer_path=os.environ.get("SGL_TOK"))
    out = {"startup_s": time.perf_counter() - t0, "max_running": eng.max_running,
           "kv_tokens": eng.kv_pool.size, "chunk": eng.scheduler.limits.chunked_prefill_size}
    sch = eng.scheduler
    reqs = mixed_requests(512, min_out=16, max_out=64)
    prompts = [r.prompt for r in reqs]
    params = [{"max_new_tokens": r.max_new_tokens, "temperature": 0, "ignore_eos": True} for r in reqs]
    steps = []
    orig = sch.step

    def step():
        t = time.perf_counter()
        ran = orig()
        if ran:
            b = sch.last_batch
            steps.append((b["mode"], b["batch_size"], sch._last_num_tokens, time.perf_counter() - t))
        return ran
    sch.step = step

    import gc
    pauses = []
    gc_start = {}

    def on_gc(phase, info):
        if phase == "start":
            gc_start["t"] = time.perf_counter()
        elif "t" in gc_start:
            pauses.append((info["generation"], time.perf_counter() - gc_start.pop("t")))
    gc.callbacks.append(on_gc)

    def one(label):
        eng.flush_cache()
        steps.clear()
        pauses.clear()
        ov0 = sch.overlapped_launches
        torch.cuda.synchronize()
        t = time.perf_counter()
        res = eng.generate(prompts, params)
        dt = time.perf_counter() - t
        in_steps = sum(d for *_, d in steps)
        agg = defaultdict(lambda: [0, 0.0, 0])
        for mode, bs, ntok, d in steps:
            a = agg[mode]
            a[0] += 1
            a[1] += d
            a[2] += ntok
        hist = defaultdict(float)
        for mode, bs, ntok, d in steps:
            if mode == "decode":
                hist[min(b for b in (8, 32, 64, 128, 256, 384, 512, 10**9) if bs <= b)] += d
        out[label] = {"seconds": dt, "tokens": sum(o["meta_info"]["completion_tokens"] for o in res),
                      "overlapped": sch.overlapped_launches - ov0, "outside_steps_s": round(dt - in_steps, 4),
                      "gc_pauses": {g: [sum(1 for x, _ in pauses if x == g),
                                        round(sum(p for x, p in pauses if x == g), 4)] for g in (0, 1, 2)},
                      "by_mode": {m: {"steps": a[0], "seconds": round(a[1], 4), "tokens": a[2]} for m, a in agg.items()},
                      "decode_seconds_by_bs": {str(k): round(v, 4) for k, v in sorted(hist.items())},
                      "first_steps": [(m, b, n, round(d * 1e3, 2)) for m, b, n, d in steps[:40]]}
        print(label, json.dumps({k: v for k, v in out[label].items() if k != "first_steps"}), flush=True)

    try:
        eng.generate(prompts[:2], {"max_new_tokens": 4, "ignore_eos": True})
        one("default")
        one("default_again")
        lim = sch.limits
        lim.chunked_prefill_size = 2048
        one("chunk_2048")
        lim.chunked_prefill_size, lim.max_running = 8192, 256
        one("running_256")
        lim.max_running = eng.max_running
        g = eng.runner.graphs
        out["ms4_replay_ms"] = {bs: round(cuda_time(g.ms_graphs[bs].replay, 10), 3) for bs in (32, 64, 128, 256, 512)}
        out["step1_replay_ms"] = {bs: round(cuda_time(g.graphs[bs].replay, 10), 3) for bs in (32, 64, 128, 256, 512)}
        t = time.perf_counter()
        eng.runner.capture_multi_step(8, eng.max_running)
        out["capture_ms8_s"] = time.perf_counter() - t
        sch.continuous_decode_steps = 8
        one("k8")
        out["ms8_replay_ms"] = {bs: round(cuda_time(g.ms_graphs[bs].replay, 10), 3) for bs in (256, 512)}
        eng.flush_cache()
        steps.clear()
        t = time.perf_counter()
        eng.generate(prompts, [{**p, "max_new_tokens": 1} for p in params])
        out["prefill_only_s"] = time.perf_counter() - t
    finally:
        eng.shutdown()
        torch.cuda.empty_cache()
    return out


EXPS = {"offline_anatomy": offline_anatomy, "gemv": gemv_variants, "timeline_4": lambda: timeline(4),
        "timeline_4_cublas": lambda: timeline(4, False), "timeline_8": lambda: timeline(8),
        "timeline_16": lambda: timeline(16), "timeline_1": lambda: timeline(1)}
for name in (sys.argv[1:] or list(EXPS)):
    fn = EXPS[name]
    t = time.perf_counter()
    try:
        res[name] = fn()
    except Exception:
        res[name] = traceback.format_exc()[-3000:]
    print(f"=== {name} ({time.perf_counter() - t:.0f}s)", json.dumps(res[name], indent=1, default=str)[:6000], flush=True)
    (OUT / "experiments.json").write_text(json.dumps(res, indent=1, default=str))
