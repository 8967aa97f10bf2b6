"""Compile the decode-path Triton kernels for Hopper (sm_90: H100/H200) on a machine without a GPU, down to a
cubin, and print each one's registers and spills (``ptxas -v`` from Triton's own package): catches what the
interpreter cannot (e4m3 conversions, ``tl.dot`` on upcast weights, a variable of a constexpr branch, the
register pressure of a tile) before a device call is spent. ``tests/kernels/test_sm90_compile.py`` runs it.
Usage: env -u TRITON_INTERPRET python scripts/triton_sm90_check.py   (exit 1 when any kernel fails)
Without TRITON_INTERPRET: under it Triton builds its own library as interpreted functions, which cannot compile.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("unset TRITON_INTERPRET: this check compiles, it does not interpret")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sgl_jupyter.kernels import decode_attention, extend_attention, fp8, gemv, sampling, store_kv  # noqa: E402


def cases():
    """(name, lazy kernel, signature without constexprs, constexprs, num_warps or launch options) per variant
    the engine launches, with the options it launches with."""
    gemv_sig = {"S": "*fp32", "X": "*bf16", "B": "*bf16", "Y": "*bf16", "P": "*fp32", "R": "*bf16", "NW": "*bf16",
                "RO": "*bf16", "N": "i32", "K": "i32", "stride_w": "i32", "K_PER_SPLIT": "i32", "eps": "fp32"}
    for weight in ("bf16", "fp8e4nv"):
        for prologue in (0, 1, 2):  # none, SiLU*mul, add + RMSNorm
            for split_k, prefetch in ((1, False), (4, False), (4, True)):
                yield (f"gemv {weight} 8x1024 prologue={prologue} split_k={split_k}{' prefetch' * prefetch} w8",
                       gemv._gemv_kernel, {"W": f"*{weight}", **gemv_sig},
                       {"HAS_SCALE": weight != "bf16", "HAS_BIAS": True, "PROLOGUE": prologue, "SPLIT_K": split_k,
                        "BLOCK_N": 8, "BLOCK_K": 1024, "BLOCK_ROW": 4096 if prologue == 2 else 16,
                        "PREFETCH": prefetch}, 8)
    yield ("split-K reduce", gemv._splitk_reduce_kernel, {"P": "*fp32", "B": "*bf16", "Y": "*bf16", "N": "i32"},
           {"HAS_BIAS": True, "SPLIT_K": 4, "BLOCK": gemv.REDUCE_BLOCK}, 4)
    yield ("per-token e4m3 quantization", fp8._quantize_rows_kernel,
           {"X": "*bf16", "Q": "*fp8e4nv", "S": "*fp32", "K": "i32", "stride_x": "i32", "stride_q": "i32"},
           {"BLOCK_K": 2048}, 4)
    yield ("w8a16 matmul 16x64x128 w4", fp8._w8a16_kernel,
           {"X": "*bf16", "W": "*fp8e4nv", "S": "*fp32", "B": "*bf16", "Y": "*bf16", "M": "i32", "N": "i32",
            "K": "i32", "stride_x": "i32", "stride_w": "i32", "stride_y": "i32"},
           {"HAS_BIAS": True, "BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128}, 4)
    for kv in ("bf16", "fp8e4nv"):
        yield (f"rope + KV store, {kv} pool", store_kv._rope_store_kv_kernel,
               {"QKV": "*bf16", "KBuf": f"*{kv}", "VBuf": f"*{kv}", "Loc": "*i64", "Pos": "*i64", "Cos": "*fp32",
                "Sin": "*fp32", "stride_t": "i32", "stride_bk": "i32", "stride_bv": "i32", "stride_c": "i32",
                "stride_s": "i32", "HQ": "i32", "HKV": "i32", "inv_k_scale": "fp32", "inv_v_scale": "fp32"},
               {"HALF": 64, "BLOCK_H": 16, "BLOCK_HALF": 64, "FP8": kv != "bf16", "ROUND_FP32": False}, 4)
    for kv in ("bf16", "fp8e4nv"):  # Llama-3-8B heads: 32 q over 8 KV, head_dim 128
        i32 = dict.fromkeys(("stride_qb", "stride_qh", "stride_kt", "stride_kh", "stride_vt", "stride_vh",
                             "stride_rt", "stride_ob", "stride_oh", "stride_os", "stride_lb", "stride_lh"), "i32")
        yield (f"decode attention split-KV, {kv} pool", decode_attention._decode_split_kernel,
               {"Q": "*bf16", "K": f"*{kv}", "V": f"*{kv}", "ReqToToken": "*i32", "ReqPoolIdx": "*i64",
                "SeqLens": "*i64", "MidO": "*fp32", "MidLse": "*fp32", "sm_scale": "fp32", "v_scale": "fp32",
                "num_kv_splits": "i32", **i32},
               {"GROUP": 4, "HEAD_DIM": 128, "BLOCK_H": 16, "BLOCK_N": decode_attention.BLOCK_N, "BLOCK_D": 128,
                "IEEE": False, "KV_FP8": kv != "bf16"}, {"num_warps": 4, "num_stages": 2})
        i32 = dict.fromkeys(("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_vt", "stride_vh",
                             "stride_ot", "stride_oh", "stride_rt"), "i32")
        yield (f"extend attention, {kv} pool", extend_attention._extend_kernel,
               {"Q": "*bf16", "K": f"*{kv}", "V": f"*{kv}", "O": "*bf16", "ReqToToken": "*i32", "ReqPoolIdx": "*i64",
                "PrefixLens": "*i64", "ExtendLens": "*i64", "ExtendStart": "*i64", "sm_scale": "fp32",
                "v_scale": "fp32", **i32},
               {"GROUP": 4, "HEAD_DIM": 128, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": 128, "IEEE": False,
                "KV_FP8": kv != "bf16"}, {"num_warps": 4, "num_stages": 2})
    yield ("decode attention merge", decode_attention._decode_merge_kernel,
           {"MidO": "*fp32", "MidLse": "*fp32", "O": "*bf16", "SeqLens": "*i64", "num_kv_splits": "i32",
            **dict.fromkeys(("stride_ob", "stride_oh", "stride_os", "stride_lb", "stride_lh", "stride_b",
                             "stride_h"), "i32")},
           {"HEAD_DIM": 128, "BLOCK_D": 128, "BLOCK_N": decode_attention.BLOCK_N}, 2)
    for logits in ("fp32", "bf16"):
        yield (f"sampler, {logits} logits", sampling._sample_kernel,
               {"Logits": f"*{logits}", "Temps": "*fp32", "TopK": "*i32", "TopP": "*fp32", "MinP": "*fp32",
                "Seeds": "*i64", "Out": "*i64", "Rounds": "*i32", "stride_l": "i32", "V": "i32"},
               {"GREEDY_T": sampling.GREEDY_TEMPERATURE, "BLOCK": 4096}, 8)


ALIGNED_INTS = {"N", "K", "M", "V", "K_PER_SPLIT"}  # multiples of 16 at the 8B shapes, as strides are


def launch_attrs(lazy, signature: dict) -> dict:
    """What a launch specializes on: Triton marks pointers and integers divisible by 16 (``tt.divisibility``),
    which lets it vectorize loads; without these marks a compile here would model scalar loads."""
    names = list(lazy.fn.__code__.co_varnames[:lazy.fn.__code__.co_argcount])
    return {(names.index(arg),): [["tt.divisibility", 16]] for arg, ty in signature.items()
            if ty.startswith("*") or (ty == "i32" and (arg.startswith("stride") or arg in ALIGNED_INTS))}


def ptxas_report(ptx: str) -> str:
    ptxas = glob.glob(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas*"))[0]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    out = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True, text=True)
    os.unlink(f.name)
    return "; ".join(line.split("info    :")[-1].strip() for line in out.stderr.splitlines()
                     if "registers" in line or "spill" in line)


def main() -> int:
    failed = total = 0
    for name, lazy, sig, consts, options in cases():
        total += 1
        full = {**sig, **{k: "constexpr" for k in consts}}
        options = options if isinstance(options, dict) else {"num_warps": options}
        try:
            k = triton.compile(ASTSource(fn=triton.jit(lazy.fn), signature=full, constexprs=consts,
                                         attrs=launch_attrs(lazy, sig)),
                               target=GPUTarget("cuda", 90, 32), options=options)
            assert k.asm.get("cubin"), "no cubin"
            print(f"ok {name}: {ptxas_report(k.asm['ptx'])}")
        except Exception as e:  # noqa: BLE001 - report every kernel, then fail
            failed += 1
            print(f"FAILED {name}: {type(e).__name__}: {str(e)[:500]}")
    print(f"compiled {total - failed} of {total} kernels for sm_90")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
