"""y = x @ W.T (+ b) for one row x: the bs=1 decode GEMV, where every weight byte is read once and time is
HBM bandwidth. cuBLAS picks kernels that reach 1.6-2.8 TB/s on an H100 for the Llama-3-8B shapes (o_proj
4096x4096 is the worst); this one reaches 2.1-3.0 TB/s by giving every program a few full rows of W and a
wide K tile (measured: scripts/gpu_experiments.py). Larger batches are GEMMs: cuBLAS keeps them.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._triton import jit, require_triton, tl, triton, use_triton

ENABLED = True  # module switch for A/B measurements (scripts/gpu_experiments.py)
BLOCK_N, BLOCK_K, NUM_WARPS = 8, 1024, 8


@jit
def _gemv_kernel(W, X, B, Y, N, K, stride_w, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        w = tl.load(W + rn[:, None].to(tl.int64) * stride_w + rk[None, :], mask=n_ok[:, None] & k_ok[None, :],
                    other=0.0)
        x = tl.load(X + rk, mask=k_ok, other=0.0)
        acc += w.to(tl.float32) * x[None, :].to(tl.float32)
    y = tl.sum(acc, 1)
    if HAS_BIAS:
        y += tl.load(B + rn, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(Y + rn, y.to(Y.dtype.element_ty), mask=n_ok)


def gemv_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def gemv_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [1, K] (contiguous), weight [N, K] (row stride >= K, unit column stride) -> [1, N]."""
    require_triton()
    N, K = weight.shape
    assert x.shape == (1, K) and weight.stride(1) == 1
    x = x.contiguous()
    y = torch.empty(1, N, dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(N, BLOCK_N),)](weight, x, bias if bias is not None else weight, y, N, K,
                                             weight.stride(0), HAS_BIAS=bias is not None, BLOCK_N=BLOCK_N,
                                             BLOCK_K=BLOCK_K, num_warps=NUM_WARPS)
    return y


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear`` with the one-row CUDA case (bs=1 decode, CUDA-graph capturable) on the Triton GEMV."""
    if (ENABLED and x.dim() == 2 and x.shape[0] == 1 and use_triton(x) and weight.stride(1) == 1
            and x.dtype in (torch.bfloat16, torch.float16)):
        return gemv_triton(x, weight, bias)
    return F.linear(x, weight, bias)
