"""y = x @ W.T (+ b) for one row x: the bs=1 decode GEMV, where every weight byte is read once and time is
HBM bandwidth. cuBLAS picks kernels that reach 1.6-2.8 TB/s on an H100 for the Llama-3-8B shapes (o_proj
4096x4096 is the worst); this one reaches 2.1-3.0 TB/s by giving every program a few full rows of W and a
wide K tile (measured: scripts/gpu_experiments.py). Shapes with few rows split K over several programs
(fp32 partials, summed by a second launch), so a small o_proj still has enough loads in flight; the tiling
comes from a per-GPU table (``gemv_configs.py``). Larger batches are GEMMs: cuBLAS keeps them.

The same kernel reads FP8 (e4m3) weights with one fp32 scale per output row (``scale``): the weight is
upcast in registers and the scale applied to each row's sum, so a token reads half the bytes while the
activations stay in bf16 (weight-only FP8, ``engine/quantization/fp8.py``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._triton import jit, require_triton, tl, triton, use_triton
from .gemv_configs import GemvConfig, config_for

ENABLED = True  # module switch for A/B measurements (scripts/gpu_experiments.py)
REDUCE_BLOCK = 1024


@jit
def _gemv_kernel(W, S, X, B, Y, P, N, K, stride_w, K_PER_SPLIT, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                 SPLIT_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_start = tl.program_id(1) * K_PER_SPLIT
    n_ok = rn < N
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K_PER_SPLIT, BLOCK_K):
        rk = k_start + k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        w = tl.load(W + rn[:, None].to(tl.int64) * stride_w + rk[None, :], mask=n_ok[:, None] & k_ok[None, :],
                    other=0.0)
        x = tl.load(X + rk, mask=k_ok, other=0.0)
        acc += w.to(tl.float32) * x[None, :].to(tl.float32)
    y = tl.sum(acc, 1)
    if HAS_SCALE:
        y *= tl.load(S + rn, mask=n_ok, other=0.0)
    if SPLIT_K == 1:
        if HAS_BIAS:
            y += tl.load(B + rn, mask=n_ok, other=0.0).to(tl.float32)
        tl.store(Y + rn, y.to(Y.dtype.element_ty), mask=n_ok)
    else:
        tl.store(P + tl.program_id(1) * N + rn, y, mask=n_ok)


@jit
def _splitk_reduce_kernel(P, B, Y, N, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    rn = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    n_ok = rn < N
    y = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(SPLIT_K):
        y += tl.load(P + s * N + rn, mask=n_ok, other=0.0)
    if HAS_BIAS:
        y += tl.load(B + rn, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(Y + rn, y.to(Y.dtype.element_ty), mask=n_ok)


def gemv_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
             scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    if scale is not None:
        weight = (weight.float() * scale.float()[:, None]).to(x.dtype)
    return F.linear(x, weight, bias)


def gemv_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                scale: Optional[torch.Tensor] = None, config: Optional[GemvConfig] = None) -> torch.Tensor:
    """x [1, K], weight [N, K] (row stride >= K, unit column stride; bf16/fp16/fp32, or fp8 with ``scale``
    [N] fp32) -> [1, N] in x's dtype. ``config``: the tiling (default: the table's for this GPU and shape)."""
    require_triton()
    N, K = weight.shape
    assert x.shape == (1, K) and weight.stride(1) == 1
    assert (scale is not None) == (weight.element_size() == 1), "fp8 weights need their per-row scale"
    x = x.contiguous()
    cfg = config or config_for(N, K, weight.element_size(), x.device.index if x.is_cuda else None)
    k_per_split = triton.cdiv(triton.cdiv(K, cfg.split_k), cfg.block_k) * cfg.block_k
    y = torch.empty(1, N, dtype=x.dtype, device=x.device)
    partials = torch.empty(cfg.split_k, N, dtype=torch.float32, device=x.device) if cfg.split_k > 1 else y
    bias_arg = bias if bias is not None else weight
    _gemv_kernel[(triton.cdiv(N, cfg.block_n), cfg.split_k)](
        weight, scale if scale is not None else weight, x, bias_arg, y, partials, N, K, weight.stride(0),
        k_per_split, HAS_SCALE=scale is not None, HAS_BIAS=bias is not None, SPLIT_K=cfg.split_k,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, **cfg.launch_options())
    if cfg.split_k > 1:
        _splitk_reduce_kernel[(triton.cdiv(N, REDUCE_BLOCK),)](partials, bias_arg, y, N, HAS_BIAS=bias is not None,
                                                                SPLIT_K=cfg.split_k, BLOCK=REDUCE_BLOCK,
                                                                num_warps=4)
    return y


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear`` with the one-row CUDA case (bs=1 decode, CUDA-graph capturable) on the Triton GEMV."""
    if (ENABLED and x.dim() == 2 and x.shape[0] == 1 and use_triton(x) and weight.stride(1) == 1
            and x.dtype in (torch.bfloat16, torch.float16)):
        return gemv_triton(x, weight, bias)
    return F.linear(x, weight, bias)
