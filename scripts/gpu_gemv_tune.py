"""Measure the one-row GEMV's tilings on this GPU and print the ``MEASURED`` entries of kernels/gemv_configs.py.

Every candidate (rows per program x bytes per row load x K splits, warps by tile size; the three best again
with the next weight tile prefetched, as Triton does not pipeline these loads) runs inside a CUDA
graph of back-to-back launches, as decode does, over enough copies of the weight that the L2 cache (50 MB
on an H200) never serves it: each launch reads its weight from HBM, as each layer does in a real step.
Reported per shape and weight dtype (bf16, fp8 e4m3): the best tiling's TB/s, the table's current choice
and the old fixed tiling (8 rows, K tile 1024, 8 warps), so a change is adopted only on a measurement; for
the qkv, gate_up and down shapes also the decode prologue fused into the GEMV against its own kernel first
(``PROLOGUE_SLOWER`` entries for the shapes where fusing lost).
Usage: python scripts/gpu_gemv_tune.py [--out DIR] [--budget-s 240]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sgl_jupyter.bench.latency import copy_bandwidth
from sgl_jupyter.kernels import fp8, gemv
from sgl_jupyter.kernels.gemv_configs import GemvConfig, config_for

# Llama-3-8B decode projections: o_proj (the slowest now), down, qkv, gate_up, LM head
SHAPES = [(4096, 4096), (4096, 14336), (6144, 4096), (28672, 4096), (128256, 4096)]
L2_BYTES = 64 * 2**20  # above the H100's 50 MB and the H200's 50 MB L2


def candidates(n: int, k: int, elem: int) -> list[GemvConfig]:
    out = []
    for block_n in (4, 8, 16):
        for row_bytes in (1024, 2048, 4096):
            block_k = row_bytes // elem
            for split in (1, 2, 4, 8):
                if k // split < block_k or block_n * block_k > 16384:  # fp32 tile <= 64 registers a thread
                    continue
                warps = 4 if block_n * row_bytes <= 8192 else 8
                out.append(GemvConfig(block_n=block_n, block_k=block_k, split_k=split, num_warps=warps))
    return out


def time_graph(step, launches: int = 8, iters: int = 20) -> float:
    """Seconds per ``step(i)``: a graph of ``launches`` steps (rotating weight copies), replayed ``iters`` times."""
    for i in range(2):
        step(i)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(launches):
            step(i)
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        g.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / (iters * launches)


def time_config(xs, ws, scales, cfg: GemvConfig) -> float:
    """Seconds per GEMV with tiling ``cfg``."""
    return time_graph(lambda i: gemv.gemv_triton(xs, ws[i % len(ws)], scale=scales[i % len(ws)] if scales else None,
                                                 config=cfg))


# the decode prologues per projection shape: the norm before qkv / gate_up, SiLU*mul before down
PROLOGUE_SHAPES = {(6144, 4096): "norm", (28672, 4096): "norm", (4096, 14336): "silu"}


def time_prologue(kind: str, k: int, ws, scales, fused: bool) -> float:
    """Seconds per prologue + GEMV (the table's tiling), fused into the GEMV's load or as its own kernel first."""
    x = torch.randn(1, 2 * k if kind == "silu" else k, device="cuda", dtype=torch.bfloat16)
    r, nw = torch.randn_like(x), torch.randn(k, device="cuda", dtype=torch.bfloat16)

    def step(i):
        pro = gemv.SiluMul() if kind == "silu" else gemv.AddRMSNorm(r, nw, 1e-5)
        w, sc = ws[i % len(ws)], scales[i % len(ws)] if scales else None
        if fused:
            gemv.gemv_triton(x, w, scale=sc, prologue=pro)
        else:
            gemv.gemv_triton(pro.unfused(x), w, scale=sc)
    return time_graph(step)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="artifacts/gpu")
    ap.add_argument("--budget-s", type=float, default=240.0, help="stop starting new shapes after this long")
    a = ap.parse_args()
    deadline = time.monotonic() + a.budget_s
    name = torch.cuda.get_device_name(0)
    res: dict = {"gpu": name, "copy_TBps": copy_bandwidth(torch.device("cuda")) / 1e12, "shapes": []}
    entries, slower = [], []
    for n, k in SHAPES:
        for elem, label in ((2, "bf16"), (1, "fp8")):
            if elem == 1 and n == SHAPES[-1][0]:
                continue  # the LM head stays in bf16 under --quantization fp8
            if time.monotonic() > deadline:
                res.setdefault("skipped", []).append(f"{label} {n}x{k}")
                continue
            dense = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
            copies = max(2, -(-2 * L2_BYTES // (n * k * elem)))
            if elem == 1:
                q, s = fp8.quantize_weight(dense)
                ws, scales = [q] + [q.clone() for _ in range(copies - 1)], [s] * copies
            else:
                ws, scales = [dense] + [dense.clone() for _ in range(copies - 1)], None
            del dense
            x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
            nbytes = n * k * elem
            rows = []
            for cfg in candidates(n, k, elem):
                try:
                    sec = time_config(x, ws, scales, cfg)
                except Exception as e:  # a tiling the compiler rejects (registers, shared memory)
                    rows.append({"config": cfg.__dict__, "error": str(e)[:200]})
                    continue
                rows.append({"config": cfg.__dict__, "us": sec * 1e6, "TBps": nbytes / sec / 1e12})
            ok = sorted((r for r in rows if "TBps" in r), key=lambda r: -r["TBps"])
            for r in ok[:3]:  # the three best tilings again with the next tile prefetched
                cfg = GemvConfig(**{**r["config"], "prefetch": True})
                try:
                    sec = time_config(x, ws, scales, cfg)
                except Exception as e:  # noqa: BLE001 - registers: recorded, not fatal
                    rows.append({"config": cfg.__dict__, "error": str(e)[:200]})
                    continue
                rows.append({"config": cfg.__dict__, "us": sec * 1e6, "TBps": nbytes / sec / 1e12})
            ok = [r for r in rows if "TBps" in r]
            best = max(ok, key=lambda r: r["TBps"])
            table_cfg = config_for(n, k, elem, 0)
            current = time_config(x, ws, scales, table_cfg)
            old = time_config(x, ws, scales, GemvConfig(8, 1024, 1, 8))
            res["shapes"].append({"dtype": label, "n": n, "k": k, "best": best, "table": table_cfg.__dict__,
                                  "table_TBps": nbytes / current / 1e12, "old_fixed_TBps": nbytes / old / 1e12,
                                  "all": rows})
            if (n, k) in PROLOGUE_SHAPES:  # what the decode fusion is worth at this shape (the table's tiling)
                kind = PROLOGUE_SHAPES[(n, k)]
                fused, alone = (time_prologue(kind, k, ws, scales, f) for f in (True, False))
                res["shapes"][-1]["prologue"] = {"kind": kind, "fused_us": fused * 1e6, "unfused_us": alone * 1e6}
                print(f"{label} {n}x{k} {kind} prologue: fused {fused * 1e6:.1f} us | own kernel first "
                      f"{alone * 1e6:.1f} us", flush=True)
                if fused > alone:
                    slower.append(f"        ({n}, {k}, {elem}),  # fused {fused * 1e6:.1f} us > {alone * 1e6:.1f}")
            c = best["config"]
            entries.append(f"        ({n}, {k}, {elem}): GemvConfig({c['block_n']}, {c['block_k']}, {c['split_k']}, "
                           f"{c['num_warps']}{', prefetch=True' if c['prefetch'] else ''}),  # {best['TBps']:.2f} TB/s")
            print(f"{label} {n}x{k}: best {best['TBps']:.2f} TB/s {c} | table {nbytes / current / 1e12:.2f} | "
                  f"old fixed {nbytes / old / 1e12:.2f}", flush=True)
            del ws, scales
            torch.cuda.empty_cache()
    key = "H200" if "H200" in name else ("H100" if "H100" in name else name)
    text = f'    "{key}": {{  # scripts/gpu_gemv_tune.py on {name}\n' + "\n".join(entries) + "\n    },"
    print(text)
    res["measured_entries"] = text
    res["prologue_slower_entries"] = f'    "{key}": {{\n' + "\n".join(slower) + "\n    },"
    print("PROLOGUE_SLOWER entries:\n" + res["prologue_slower_entries"])
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "gemv_tune.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
