"""Compile the decode-path Triton kernels for sm_90 (H100/H200) on any machine, GPU or not, down to a cubin with
the ptxas in Triton's wheel: what the interpreter runs but the compiler rejects fails here, before a GPU call.
    python scripts/sm90_compile_check.py        (exit 1 and the error on the first kernel that does not compile)
Run without TRITON_INTERPRET: Triton decorates its own library as interpreted functions when that is set."""
from __future__ import annotations

import os
import sys
import time

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("unset TRITON_INTERPRET: the check compiles, it does not interpret")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sgl_jupyter.kernels import gemv, sampling, store_kv  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


def cases():
    """(name, lazy kernel, signature, constexprs, num_warps) for every variant the engine launches."""
    for weight in ("bf16", "fp8e4nv"):
        sig = {"W": f"*{weight}", "S": "*fp32", "X": "*bf16", "B": "*bf16", "Y": "*bf16", "P": "*fp32",
               "R": "*bf16", "NW": "*bf16", "RO": "*bf16", "N": "i32", "K": "i32", "stride_w": "i32",
               "K_PER_SPLIT": "i32", "eps": "fp32"}
        for prologue in (0, 1, 2):
            for split_k in (1, 4):
                yield (f"gemv {weight} prologue={prologue} split_k={split_k}", gemv._gemv_kernel, sig,
                       {"HAS_SCALE": weight != "bf16", "HAS_BIAS": True, "PROLOGUE": prologue, "SPLIT_K": split_k,
                        "BLOCK_N": 8, "BLOCK_K": 1024, "BLOCK_ROW": 4096 if prologue == 2 else 16}, 8)
    for kv in ("bf16", "fp8e4nv"):
        sig = {"QKV": "*bf16", "KBuf": f"*{kv}", "VBuf": f"*{kv}", "Loc": "*i64", "Pos": "*i64", "Cos": "*fp32",
               "Sin": "*fp32", "stride_t": "i32", "stride_bk": "i32", "stride_bv": "i32", "stride_c": "i32",
               "stride_s": "i32", "HQ": "i32", "HKV": "i32", "inv_k_scale": "fp32", "inv_v_scale": "fp32"}
        yield (f"rope_store_kv {kv}", store_kv._rope_store_kv_kernel, sig,
               {"HALF": 64, "BLOCK_H": 16, "BLOCK_HALF": 64, "FP8": kv != "bf16", "ROUND_FP32": False}, 4)
    for logits in ("fp32", "bf16"):
        sig = {"Logits": f"*{logits}", "Temps": "*fp32", "TopK": "*i32", "TopP": "*fp32", "MinP": "*fp32",
               "Seeds": "*i64", "Out": "*i64", "Rounds": "*i32", "stride_l": "i32", "V": "i32"}
        yield (f"sample {logits}", sampling._sample_kernel, sig,
               {"GREEDY_T": sampling.GREEDY_TEMPERATURE, "BLOCK": 4096}, 8)


def main() -> int:
    for name, lazy, sig, const, warps in cases():
        t0 = time.perf_counter()
        fn = triton.runtime.JITFunction(lazy.fn)
        full = {**sig, **{k: "constexpr" for k in const}}
        try:
            compiled = triton.compile(ASTSource(fn, full, const), target=TARGET, options={"num_warps": warps})
        except Exception as e:  # noqa: BLE001 - reported with the kernel's name
            print(f"FAILED {name}: {type(e).__name__}: {e}")
            return 1
        assert compiled.asm.get("cubin"), name
        print(f"ok {name} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
