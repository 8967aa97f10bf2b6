"""One device run for the kernels: correctness against the torch references across shapes, then
timings (median of CUDA-event timed repeats) with bandwidth against the measured device-to-device
copy bandwidth. Prints a table last and writes ``kernels.json`` under ``--out``.

    python3 scripts/gpu_kernels_check.py --out $OUT            # on the GPU
    TRITON_INTERPRET=1 python scripts/gpu_kernels_check.py --quick --device cpu   # logic check, CPU
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sgl_jupyter.kernels.decode_attention import (choose_num_kv_splits, decode_attention_ref,  # noqa: E402
                                                  decode_attention_triton)
from sgl_jupyter.kernels.extend_attention import extend_attention_ref, extend_attention_triton  # noqa: E402
from sgl_jupyter.kernels.rmsnorm import fused_add_rmsnorm_ref, fused_add_rmsnorm_triton  # noqa: E402
from sgl_jupyter.kernels.rope import apply_rope_ref, apply_rope_triton  # noqa: E402
from sgl_jupyter.kernels.sampling import sample_triton, top_k_top_p_min_p_probs_ref  # noqa: E402
from sgl_jupyter.kernels.store_kv import store_kv_ref, store_kv_triton  # noqa: E402
from tests.kernels.helpers import make_paged, rel_err  # noqa: E402

RESULTS: dict = {"correctness": [], "timings": []}


def bench_ms(fn, device: str, reps: int = 100) -> float:
    """Median milliseconds of one call."""
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=reps, return_mode="median"))
    fn()
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def record_err(kernel: str, shape: str, out: torch.Tensor, ref: torch.Tensor, **extra) -> None:
    d = (out.double() - ref.double()).abs()
    row = dict(kernel=kernel, shape=shape, max_abs=d.max().item(), rel=rel_err(out, ref),
               nan=bool(out.isnan().any()), **extra)
    RESULTS["correctness"].append(row)
    print(f"  {kernel:10s} {shape:44s} max_abs={row['max_abs']:.2e} rel={row['rel']:.2e}", flush=True)


def record_time(kernel: str, shape: str, ms: float, bytes_moved: float = 0.0, flops: float = 0.0,
                peer: str = "", peer_ms: float = float("nan")) -> None:
    row = dict(kernel=kernel, shape=shape, ms=ms, gbps=bytes_moved / ms / 1e6 if bytes_moved else None,
               tflops=flops / ms / 1e9 if flops else None, peer=peer, peer_ms=peer_ms)
    if bytes_moved and RESULTS.get("copy_gbps"):
        row["pct_of_copy_bw"] = 100 * row["gbps"] / RESULTS["copy_gbps"]
    RESULTS["timings"].append(row)
    bw = f" {row['gbps']:8.1f} GB/s ({row.get('pct_of_copy_bw', float('nan')):5.1f}% copy)" if bytes_moved else ""
    fl = f" {row['tflops']:7.1f} TFLOP/s" if flops else ""
    pr = f"  vs {peer} {peer_ms:.4f} ms (x{peer_ms / ms:.2f})" if peer else ""
    print(f"  {kernel:10s} {shape:44s} {ms:9.4f} ms{bw}{fl}{pr}", flush=True)


def copy_bandwidth(device: str, quick: bool) -> float:
    n = (1 << 20) if quick else (1 << 30)
    x = torch.empty(n, dtype=torch.uint8, device=device).random_(0, 255)
    y = torch.empty_like(x)
    ms = bench_ms(lambda: y.copy_(x), device)
    gbps = 2 * n / ms / 1e6
    RESULTS["copy_gbps"] = gbps
    print(f"device-to-device copy: {2 * n / 2**30:.2f} GiB read+written in {ms:.3f} ms = {gbps:.0f} GB/s")
    return gbps


def check_correctness(device: str, quick: bool) -> None:
    print("== correctness (Triton vs float32 torch reference) ==")
    dt = torch.float32 if device == "cpu" else torch.bfloat16
    heads = [(9, 3, 64), (32, 8, 128)] if quick else [(9, 3, 64), (32, 8, 128), (32, 32, 128), (28, 4, 128),
                                                      (64, 8, 128)]
    seqs = [1, 33, 200] if quick else [1, 63, 64, 65, 777, 4096, 8192]
    for hq, hkv, d in heads:
        p = make_paged(len(seqs), hq, hkv, d, [n - 1 for n in seqs], [1] * len(seqs), dt, device, seed=hq)
        q = torch.randn(len(seqs), hq, d, device=device).to(dt)
        args = (q, p["k_buffer"], p["v_buffer"], p["req_to_token"], p["req_pool_indices"], p["seq_lens"], d ** -0.5)
        splits = choose_num_kv_splits(len(seqs), hkv, 132)
        record_err("decode", f"{hq}q/{hkv}kv d{d} seqs={seqs} splits={splits}",
                   decode_attention_triton(*args, num_kv_splits=splits), decode_attention_ref(*args))
        prefix, ext = ([0, 20], [9, 3]) if quick else ([0, 4096, 1000, 0], [2048, 300, 1, 129])
        p = make_paged(len(ext), hq, hkv, d, prefix, ext, dt, device, seed=d)
        q = torch.randn(sum(ext), hq, d, device=device).to(dt)
        args = (q, p["k_buffer"], p["v_buffer"], p["req_to_token"], p["req_pool_indices"], p["prefix_lens"],
                p["extend_lens"], d ** -0.5)
        record_err("extend", f"{hq}q/{hkv}kv d{d} prefix={prefix} ext={ext}", extend_attention_triton(*args),
                   extend_attention_ref(*args))
    for t, n in ([(3, 64)] if quick else [(1, 4096), (300, 4096), (2048, 3584), (64, 8192)]):
        x, r = torch.randn(t, n, device=device).to(dt), torch.randn(t, n, device=device).to(dt)
        w = (1 + 0.1 * torch.randn(n, device=device)).to(dt)
        out, res = fused_add_rmsnorm_triton(x, r, w, 1e-5)
        rout, rres = fused_add_rmsnorm_ref(x, r, w, 1e-5)
        record_err("rmsnorm", f"[{t},{n}] +residual", out, rout, residual_exact=bool(torch.equal(res, rres)))
    for hq, hkv, d in heads:
        T = 7 if quick else 1000
        pos = torch.randint(0, 8192, (T,), device=device)
        ang = torch.rand(8192, d // 2, device=device) * 100
        cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
        q, k = torch.randn(T, hq, d, device=device).to(dt), torch.randn(T, hkv, d, device=device).to(dt)
        oq, ok = apply_rope_triton(q, k, pos, cos, sin)
        rq, rk = apply_rope_ref(q, k, pos, cos, sin)
        record_err("rope", f"T={T} {hq}q/{hkv}kv d{d}", torch.cat([oq.flatten(), ok.flatten()]),
                   torch.cat([rq.flatten(), rk.flatten()]))
    kb = torch.randn(5000, 8, 128, device=device).to(dt)
    vb, kb2, vb2 = torch.randn_like(kb), kb.clone(), None
    vb2 = vb.clone()
    loc = torch.randperm(4999, device=device)[:300] + 1
    k, v = torch.randn(300, 8, 128, device=device), torch.randn(300, 8, 128, device=device)
    store_kv_triton(kb, vb, loc, k, v)
    store_kv_ref(kb2, vb2, loc, k, v)
    record_err("store_kv", "T=300 8kv d128 (float32 -> pool dtype)", torch.cat([kb, vb]), torch.cat([kb2, vb2]),
               exact=bool(torch.equal(kb, kb2) and torch.equal(vb, vb2)))
    V = 1000 if quick else 128256
    rows = [(0.0, -1, 1.0, 0.0), (1.0, 50, 1.0, 0.0), (0.7, -1, 0.9, 0.0), (1.0, -1, 1.0, 0.05), (1.2, 40, 0.8, 0.1)]
    B = len(rows) * (1 if quick else 8)
    t, kk, pp, mm = zip(*(rows * (B // len(rows))))
    params = (torch.tensor(t, device=device), torch.tensor(kk, dtype=torch.int32, device=device),
              torch.tensor(pp, device=device), torch.tensor(mm, device=device))
    logits = torch.randn(B, V, device=device) * 4
    ids, rounds = sample_triton(logits, *params, torch.randint(0, 2**62, (B,), device=device), return_rounds=True)
    ref = top_k_top_p_min_p_probs_ref(logits, *params)
    greedy = params[0] <= 1e-6
    row = dict(kernel="sampling", shape=f"B={B} V={V}", greedy_equal=bool(torch.equal(ids[greedy],
                                                                                          logits[greedy].argmax(-1))),
               drawn_in_ref_support=float((ref.gather(1, ids[:, None]) > 0).float().mean()),
               mean_draws=float(rounds[~greedy].float().mean()), max_draws=int(rounds.max()))
    RESULTS["correctness"].append(row)
    print(f"  sampling   {row}")


def paged_pool(tokens: int, hkv: int, d: int, dtype, device: str, layers: int):
    """``layers`` pools of ``tokens`` slots (rotated between calls so timings do not measure L2)."""
    ks = [torch.randn(tokens + 1, hkv, d, device=device, dtype=dtype) for _ in range(layers)]
    vs = [torch.randn_like(k) for k in ks]
    return ks, vs


def time_decode(device: str, quick: bool, copy_gbps: float) -> None:
    print("== decode attention, Llama-3-8B layer (32q/8kv, d128, bf16) ==")
    hq, hkv, d = 32, 8, 128
    dt = torch.float32 if device == "cpu" else torch.bfloat16
    esz = torch.empty((), dtype=dt).element_size()
    cases = [(1, 64), (2, 64)] if quick else [(1, 256), (1, 2048), (1, 8192), (1, 32768), (8, 2048), (8, 8192),
                                             (32, 2048), (32, 8192), (64, 1024), (64, 4096), (128, 2048), (256, 1024)]
    for bs, ctx in cases:
        tokens = bs * ctx
        kv_bytes = 2 * tokens * hkv * d * esz
        layers = 1 if quick else max(1, min(16, math.ceil(256e6 / kv_bytes)))
        ks, vs = paged_pool(tokens, hkv, d, dt, device, layers)
        g = torch.Generator(device="cpu").manual_seed(bs + ctx)
        r2t = (torch.randperm(tokens, generator=g) + 1).to(torch.int32).view(bs, ctx).to(device)
        rows = torch.arange(bs, device=device)
        seq = torch.full((bs,), ctx, device=device)
        q = torch.randn(bs, hq, d, device=device, dtype=dt)
        splits = choose_num_kv_splits(bs, hkv, torch.cuda.get_device_properties(0).multi_processor_count
                                      if device == "cuda" else 8)
        mid_o = torch.empty(bs, hq, splits, d, device=device)
        mid_lse = torch.empty(bs, hq, splits, device=device)
        out = torch.empty_like(q)
        it = [0]

        def run():
            i = it[0] = (it[0] + 1) % layers
            decode_attention_triton(q, ks[i], vs[i], r2t, rows, seq, d ** -0.5, num_kv_splits=splits, out=out,
                                    mid_o=mid_o, mid_lse=mid_lse)
        ms = bench_ms(run, device)
        peer, peer_ms = "", float("nan")
        if bs * ctx <= 65536 and device == "cuda":  # the torch reference path (gather + SDPA), as the CPU backend does
            def sdpa():
                k2 = ks[0][r2t.long()].transpose(1, 2)
                v2 = vs[0][r2t.long()].transpose(1, 2)
                torch.nn.functional.scaled_dot_product_attention(q.unsqueeze(2), k2, v2, enable_gqa=True)
            peer, peer_ms = "torch gather+SDPA", bench_ms(sdpa, device)
        record_time("decode", f"bs={bs} ctx={ctx} splits={splits}", ms, bytes_moved=kv_bytes + 2 * q.numel() * esz,
                    peer=peer, peer_ms=peer_ms)
        if device == "cuda" and bs == 1 and ctx in (256, 2048):  # per-layer cost inside a CUDA graph of 32 layers
            run()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(32):
                    decode_attention_triton(q, ks[0], vs[0], r2t, rows, seq, d ** -0.5, num_kv_splits=splits,
                                            out=out, mid_o=mid_o, mid_lse=mid_lse)
            gms = bench_ms(graph.replay, device) / 32
            record_time("decode", f"bs=1 ctx={ctx} in CUDA graph (per layer)", gms, bytes_moved=kv_bytes)
        del ks, vs


def time_others(device: str, quick: bool) -> None:
    dt = torch.float32 if device == "cpu" else torch.bfloat16
    esz = torch.empty((), dtype=dt).element_size()
    print("== extend attention (32q/8kv d128) ==")
    hq, hkv, d = 32, 8, 128
    for prefix, ext in ([([0], [16])] if quick else [([0], [128]), ([0], [2048]), ([2048] * 4, [512] * 4),
                                                      ([0] * 8, [1024] * 8), ([4096], [1024])]):
        p = make_paged(len(ext), hq, hkv, d, prefix, ext, dt, device)
        q = torch.randn(sum(ext), hq, d, device=device, dtype=dt)
        mx = max(ext)
        start = torch.cumsum(p["extend_lens"], 0) - p["extend_lens"]
        fn = lambda: extend_attention_triton(q, p["k_buffer"], p["v_buffer"], p["req_to_token"],  # noqa: E731
                                             p["req_pool_indices"], p["prefix_lens"], p["extend_lens"], d ** -0.5,
                                             max_extend_len=mx, extend_start_loc=start)
        visible = sum(e * pr + e * (e + 1) // 2 for pr, e in zip(prefix, ext))
        record_time("extend", f"prefix={prefix[0]}x{len(prefix)} ext={ext[0]}x{len(ext)}", bench_ms(fn, device),
                    flops=4 * hq * d * visible)
    print("== rmsnorm + residual (hidden 4096) / rope (32q/8kv d128) / store_kv (8kv d128) ==")
    for T in ([4] if quick else [1, 64, 4096]):
        x, r = torch.randn(T, 4096, device=device, dtype=dt), torch.randn(T, 4096, device=device, dtype=dt)
        w = torch.randn(4096, device=device, dtype=dt)
        record_time("rmsnorm", f"T={T} fused add", bench_ms(lambda: fused_add_rmsnorm_triton(x, r, w, 1e-5), device),
                    bytes_moved=4 * x.numel() * esz, peer="torch ref",
                    peer_ms=bench_ms(lambda: fused_add_rmsnorm_ref(x, r, w, 1e-5), device))
        q, k = torch.randn(T, 32, 128, device=device, dtype=dt), torch.randn(T, 8, 128, device=device, dtype=dt)
        pos = torch.randint(0, 8192, (T,), device=device)
        cos, sin = torch.randn(8192, 128, device=device), torch.randn(8192, 128, device=device)
        record_time("rope", f"T={T}", bench_ms(lambda: apply_rope_triton(q, k, pos, cos, sin, inplace=True), device),
                    bytes_moved=2 * (q.numel() + k.numel()) * esz, peer="torch ref",
                    peer_ms=bench_ms(lambda: apply_rope_ref(q, k, pos, cos, sin), device))
        kb = torch.empty(200000, 8, 128, device=device, dtype=dt)
        vb = torch.empty_like(kb)
        loc = torch.randperm(199999, device=device)[:T] + 1
        kn, vn = torch.randn(T, 8, 128, device=device, dtype=dt), torch.randn(T, 8, 128, device=device, dtype=dt)
        record_time("store_kv", f"T={T}", bench_ms(lambda: store_kv_triton(kb, vb, loc, kn, vn), device),
                    bytes_moved=4 * kn.numel() * esz, peer="torch index_put",
                    peer_ms=bench_ms(lambda: store_kv_ref(kb, vb, loc, kn, vn), device))
    print("== sampling (vocab 128256, float32 logits) ==")
    V = 1000 if quick else 128256
    for B, (t, k, p, m) in ([(2, (1.0, 50, 0.9, 0.0))] if quick else
                            [(1, (0.0, -1, 1.0, 0.0)), (1, (1.0, 50, 0.9, 0.0)), (1, (0.7, -1, 0.95, 0.0)),
                             (64, (1.0, 50, 0.9, 0.0)), (64, (1.0, -1, 1.0, 0.05)), (256, (0.8, 40, 0.9, 0.02))]):
        logits = torch.randn(B, V, device=device) * 3
        params = (torch.full((B,), t, device=device), torch.full((B,), k, dtype=torch.int32, device=device),
                  torch.full((B,), p, device=device), torch.full((B,), m, device=device))
        seeds = torch.randint(0, 2**62, (B,), device=device)
        ref = lambda: torch.multinomial(top_k_top_p_min_p_probs_ref(logits, *params), 1)  # noqa: E731
        record_time("sampling", f"B={B} T={t} top_k={k} top_p={p} min_p={m}",
                    bench_ms(lambda: sample_triton(logits, *params, seeds), device), bytes_moved=logits.numel() * 4,
                    peer="torch sort ref", peer_ms=bench_ms(ref, device))


def time_flashinfer(device: str) -> None:
    try:
        import flashinfer
    except Exception as e:  # noqa: BLE001
        print(f"== flashinfer not importable ({type(e).__name__}: {e}); skipped ==")
        return
    print(f"== flashinfer {flashinfer.__version__} decode (32q/8kv d128 bf16, page size 1) ==")
    hq, hkv, d, dt = 32, 8, 128, torch.bfloat16
    ws = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=True)
    for bs, ctx in [(1, 2048), (1, 8192), (32, 2048), (64, 4096)]:
        tokens = bs * ctx
        kb = torch.randn(tokens + 1, 1, hkv, d, device=device, dtype=dt)
        vb = torch.randn_like(kb)
        idx = (torch.randperm(tokens, device=device) + 1).to(torch.int32)
        indptr = torch.arange(0, tokens + 1, ctx, dtype=torch.int32)
        t0 = time.perf_counter()
        wrapper.plan(indptr, idx, torch.ones(bs, dtype=torch.int32), hq, hkv, d, 1, q_data_type=dt, kv_data_type=dt,
                     sm_scale=d ** -0.5)
        q = torch.randn(bs, hq, d, device=device, dtype=dt)
        out = wrapper.run(q, (kb, vb))
        torch.cuda.synchronize()
        r2t = idx.view(bs, ctx)
        ref = decode_attention_ref(q, kb[:, 0], vb[:, 0], r2t, torch.arange(bs, device=device),
                                   torch.full((bs,), ctx, device=device), d ** -0.5)
        record_err("fi_decode", f"bs={bs} ctx={ctx} (first call {time.perf_counter() - t0:.1f}s incl. JIT)", out, ref)
        record_time("fi_decode", f"bs={bs} ctx={ctx}", bench_ms(lambda: wrapper.run(q, (kb, vb)), device),
                    bytes_moved=2 * tokens * hkv * d * 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "artifacts/gpu"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (a logic check, e.g. on CPU)")
    ap.add_argument("--skip-flashinfer", action="store_true")
    ap.add_argument("--only-flashinfer", action="store_true", help="just the FlashInfer section (its JIT is slow)")
    args = ap.parse_args()
    torch.manual_seed(0)
    info = dict(torch=torch.__version__, device=args.device)
    if args.device == "cuda":
        import triton

        prop = torch.cuda.get_device_properties(0)
        info.update(gpu=prop.name, sms=prop.multi_processor_count, triton=triton.__version__)
    RESULTS["env"] = info
    print(info)
    t0 = time.time()
    copy_gbps = copy_bandwidth(args.device, args.quick)
    sections = [] if args.only_flashinfer else [
        lambda: check_correctness(args.device, args.quick),
        lambda: time_decode(args.device, args.quick, copy_gbps), lambda: time_others(args.device, args.quick)]
    for section in sections:
        try:
            section()
        except Exception as e:  # noqa: BLE001 - one broken section must not hide the others' numbers
            import traceback

            traceback.print_exc()
            RESULTS.setdefault("errors", []).append(f"{type(e).__name__}: {e}")
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "kernels.json").write_text(json.dumps(RESULTS, indent=1))
    if args.device == "cuda" and not args.skip_flashinfer:
        try:
            time_flashinfer(args.device)
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            RESULTS.setdefault("errors", []).append(f"flashinfer: {type(e).__name__}: {e}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    name = "kernels_flashinfer.json" if args.only_flashinfer else "kernels.json"
    (Path(args.out) / name).write_text(json.dumps(RESULTS, indent=1))
    print(f"\n== summary ({time.time() - t0:.0f}s; copy bandwidth {copy_gbps:.0f} GB/s) ==")
    for r in RESULTS["correctness"]:
        print("  ERR ", {k: (f"{v:.2e}" if isinstance(v, float) else v) for k, v in r.items()})
    for r in RESULTS["timings"]:
        extra = f" {r['gbps']:.0f} GB/s {r.get('pct_of_copy_bw', 0):.0f}%" if r.get("gbps") else ""
        extra += f" {r['tflops']:.0f} TFLOP/s" if r.get("tflops") else ""
        extra += f" | {r['peer']} x{r['peer_ms'] / r['ms']:.2f}" if r.get("peer") else ""
        print(f"  TIME {r['kernel']:9s} {r['shape']:42s} {r['ms']:.4f} ms{extra}")
    if RESULTS.get("errors"):
        print("ERRORS:", RESULTS["errors"])
        sys.exit(1)


if __name__ == "__main__":
    main()
