"""Where a bs=1 decode step's time goes on the GPU (a developer's diagnostic, not a benchmark):
graph replay alone, the same step's kernels by name (torch.profiler over an eager step), and the
GEMVs alone. Usage: python scripts/gpu_decode_profile.py [--model llama3-8b] [--out DIR]"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sgl_jupyter.bench.latency import cuda_time_ms as cuda_time
from sgl_jupyter.engine.quantization import linear_layers
from sgl_jupyter.kernels import gemv


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama3-8b")
    ap.add_argument("--ctx", type=int, default=192)
    ap.add_argument("--out", default="artifacts/gpu")
    ap.add_argument("--tokenizer-path", default=None, help="tokenizer directory (the shipped configs have none; "
                                                          "default: the embedded model's)")
    ap.add_argument("--quantization", default=None, help="e.g. fp8: profile the quantized decode step")
    a = ap.parse_args()
    from sgl_jupyter import Engine
    from sgl_jupyter.bench.latency import copy_bandwidth, resolve_model_path, weight_bytes
    from sgl_jupyter.engine.forward_batch import ForwardBatch, ForwardMode

    eng = Engine(resolve_model_path(a.model), load_format="dummy", device="cuda", max_total_tokens=8192,
                 max_running_requests=8, cuda_graph_max_bs=8, tokenizer_path=a.tokenizer_path,
                 quantization=a.quantization)
    res: dict = {"model": a.model, "quantization": a.quantization}
    try:
        runner = eng.runner
        row = eng.req_pool.alloc()
        slots = eng.kv_pool.alloc(a.ctx)
        eng.req_pool.write(row, 0, slots)
        fb = ForwardBatch.build(ForwardMode.DECODE, [123], [a.ctx - 1], slots[-1:], [row], [a.ctx - 1], [1],
                                eng.req_pool.table, [0], eng.device)
        res["graph_replay_ms"] = cuda_time(lambda: runner.graphs.replay(fb))
        res["eager_step_ms"] = cuda_time(lambda: runner._forward_eager(fb), iters=10)

        def wall_step():
            f = ForwardBatch.build(ForwardMode.DECODE, [123], [a.ctx - 1], slots[-1:], [row], [a.ctx - 1], [1],
                                   eng.req_pool.table, [0], eng.device)
            runner.forward(f).argmax(-1).tolist()

        for _ in range(5):
            wall_step()
        t0 = time.perf_counter()
        for _ in range(50):
            wall_step()
        res["build+replay+argmax+sync_ms"] = (time.perf_counter() - t0) / 50 * 1e3
        model = eng.loaded.model
        mods = [m for _, m in linear_layers(model)]  # the layers' own path (Triton GEMV, fp8 when quantized)
        mats = [m.weight for m in mods] + [model.lm_head_weight]
        x = torch.randn(1, model.config.hidden_size, device="cuda", dtype=eng.loaded.dtype)
        xs = {w.shape[1]: torch.randn(1, w.shape[1], device="cuda", dtype=eng.loaded.dtype) for w in mats}

        def gemvs():
            for m in mods:
                m(xs[m.weight.shape[1]])
            gemv.linear(xs[model.lm_head_weight.shape[1]], model.lm_head_weight)

        g = torch.cuda.CUDAGraph()
        gemvs()
        torch.cuda.synchronize()
        with torch.cuda.graph(g):
            gemvs()
        res["gemvs_only_graph_ms"] = cuda_time(g.replay)
        shapes = {}
        for w in mats:
            if w.element_size() > 1:  # cuBLAS peers for the dense weights
                shapes.setdefault(tuple(w.shape), w)
        for lib in ("cublaslt", "cublas"):
            torch.backends.cuda.preferred_blas_library(lib)
            for shape, w in shapes.items():
                xin = xs[w.shape[1]]
                ms = cuda_time(lambda: torch.nn.functional.linear(xin, w), iters=100)
                res[f"gemv_{lib}_{shape[0]}x{shape[1]}_TBps"] = w.numel() * w.element_size() / (ms / 1e3) / 1e12
                if lib == "cublas":
                    wt = w.t().contiguous()
                    ms = cuda_time(lambda: torch.matmul(xin, wt), iters=100)
                    res[f"gemv_NN_{shape[0]}x{shape[1]}_TBps"] = w.numel() * w.element_size() / (ms / 1e3) / 1e12
                    del wt
        torch.backends.cuda.preferred_blas_library("cublaslt")
        wb = weight_bytes(model)
        bw = copy_bandwidth(eng.device)
        res["weight_GB"] = wb / 1e9
        res["copy_TBps"] = bw / 1e12
        res["roofline_ms"] = wb / bw * 1e3
        res["gemv_bytes_GBps"] = sum(w.numel() * w.element_size() for w in mats) / (res["gemvs_only_graph_ms"] / 1e3) / 1e9
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            runner._forward_eager(fb)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
        print(table)
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "decode_profile.txt").write_text(table)
        del x
    finally:
        eng.shutdown()
    print(json.dumps(res, indent=1))
    (Path(a.out) / "decode_profile.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
