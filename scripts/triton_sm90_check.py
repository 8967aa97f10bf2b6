"""Compile the GEMV and FP8 kernels for Hopper (sm_90) on a machine without a GPU, and print each one's
registers and spills (``ptxas -v`` from Triton's own package): catches what the interpreter cannot (e4m3
conversions, ``tl.dot`` on upcast weights, register pressure of a tile) before a device call is spent.
Usage: env -u TRITON_INTERPRET python scripts/triton_sm90_check.py
"""
from __future__ import annotations

import glob
import os
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sgl_jupyter.kernels import fp8, gemv

GEMV_SIG = {"W": "*fp8e4nv", "S": "*fp32", "X": "*bf16", "B": "*bf16", "Y": "*bf16", "P": "*fp32", "N": "i32",
            "K": "i32", "stride_w": "i32", "K_PER_SPLIT": "i32", "HAS_SCALE": "constexpr", "HAS_BIAS": "constexpr",
            "SPLIT_K": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr"}
CASES = [
    ("gemv fp8 8x1024 split2 w8", gemv._gemv_kernel, GEMV_SIG,
     {"HAS_SCALE": True, "HAS_BIAS": True, "SPLIT_K": 2, "BLOCK_N": 8, "BLOCK_K": 1024}, 8),
    ("gemv bf16 8x1024 w8", gemv._gemv_kernel, {**GEMV_SIG, "W": "*bf16"},
     {"HAS_SCALE": False, "HAS_BIAS": False, "SPLIT_K": 1, "BLOCK_N": 8, "BLOCK_K": 1024}, 8),
    ("split-K reduce", gemv._splitk_reduce_kernel,
     {"P": "*fp32", "B": "*bf16", "Y": "*bf16", "N": "i32", "HAS_BIAS": "constexpr", "SPLIT_K": "constexpr",
      "BLOCK": "constexpr"}, {"HAS_BIAS": True, "SPLIT_K": 4, "BLOCK": gemv.REDUCE_BLOCK}, 4),
    ("per-token e4m3 quantization", fp8._quantize_rows_kernel,
     {"X": "*bf16", "Q": "*fp8e4nv", "S": "*fp32", "K": "i32", "stride_x": "i32", "stride_q": "i32",
      "BLOCK_K": "constexpr"}, {"BLOCK_K": 2048}, 4),
    ("w8a16 matmul 16x64x128 w4", fp8._w8a16_kernel,
     {"X": "*bf16", "W": "*fp8e4nv", "S": "*fp32", "B": "*bf16", "Y": "*bf16", "M": "i32", "N": "i32", "K": "i32",
      "stride_x": "i32", "stride_w": "i32", "stride_y": "i32", "HAS_BIAS": "constexpr", "BLOCK_M": "constexpr",
      "BLOCK_N": "constexpr", "BLOCK_K": "constexpr"},
     {"HAS_BIAS": True, "BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128}, 4),
]


def ptxas_report(ptx: str) -> str:
    ptxas = glob.glob(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas*"))[0]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    out = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True, text=True)
    os.unlink(f.name)
    return "; ".join(line.split("info    :")[-1].strip() for line in out.stderr.splitlines()
                     if "registers" in line or "spill" in line)


def main() -> int:
    failed = 0
    for name, lazy, sig, consts, warps in CASES:
        try:
            k = triton.compile(ASTSource(fn=triton.jit(lazy.fn), signature=sig, constexprs=consts),
                               target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
            print(f"{name}: {ptxas_report(k.asm['ptx'])}")
        except Exception as e:  # report every kernel, then fail
            failed += 1
            print(f"{name}: FAILED {type(e).__name__}: {str(e)[:500]}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
