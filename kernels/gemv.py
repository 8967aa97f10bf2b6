"""y = x @ W.T (+ b) for one row x: the bs=1 decode GEMV, where every weight byte is read once and time is
HBM bandwidth. cuBLAS picks kernels that reach 1.6-2.8 TB/s on an H100 for the Llama-3-8B shapes (o_proj
4096x4096 is the worst); this one reaches 2.1-3.0 TB/s by giving every program a few full rows of W and a
wide K tile (measured: scripts/gpu_experiments.py). Shapes with few rows split K over several programs
(fp32 partials, summed by a second launch), so a small o_proj still has enough loads in flight; the tiling
comes from a per-GPU table (``gemv_configs.py``). Larger batches are GEMMs: cuBLAS keeps them.

The same kernel reads FP8 (e4m3) weights with one fp32 scale per output row (``scale``): the weight is
upcast in registers and the scale applied to each row's sum, so a token reads half the bytes while the
activations stay in bf16 (weight-only FP8, ``engine/quantization/fp8.py``).

At one row the small kernels between GEMVs cost launches and a round trip of the activation through HBM,
so two of them ride the next GEMV's load of x (its prologue, rounded exactly as the separate kernels round):
the residual add + RMSNorm before ``qkv_proj``/``gate_up_proj`` (``AddRMSNorm``: each program first reads the
whole row from L2 for its 1/rms) and SiLU*mul before ``down_proj`` (``SiluMul``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F

from . import fusions
from ._triton import HAS_TRITON, jit, next_pow2, require_triton, tl, triton, use_triton
from .activation import silu_and_mul
from .gemv_configs import GemvConfig, config_for, prologue_pays
from .rmsnorm import fused_add_rmsnorm

ENABLED = True  # module switch for A/B measurements (scripts/gpu_experiments.py)
REDUCE_BLOCK = 1024


if HAS_TRITON:
    @triton.jit
    def _gemv_x(X, R, NW, rk, k_ok, K, rstd, PROLOGUE: tl.constexpr):
        """The GEMV's input at ``rk``: x itself, or what the prologue makes of it (rounded as the separate kernels
        round)."""
        x = tl.load(X + rk, mask=k_ok, other=0.0)
        if PROLOGUE == 1:  # SiLU(gate) * up over X = [gate | up], as kernels/activation.py
            u = tl.load(X + K + rk, mask=k_ok, other=0.0)
            g = x.to(tl.float32)
            x = ((g / (1.0 + tl.exp(-g))).to(X.dtype.element_ty).to(tl.float32) * u.to(tl.float32)).to(
                X.dtype.element_ty)
        if PROLOGUE == 2:  # as kernels/rmsnorm.py: sum, normed row, times the norm weight
            r = tl.load(R + rk, mask=k_ok, other=0.0)
            sk = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty).to(tl.float32)
            nw = tl.load(NW + rk, mask=k_ok, other=0.0).to(tl.float32)
            x = ((sk * rstd).to(X.dtype.element_ty).to(tl.float32) * nw).to(X.dtype.element_ty)
        return x


@jit
def _gemv_kernel(W, S, X, B, Y, P, R, NW, RO, N, K, stride_w, K_PER_SPLIT, eps, HAS_SCALE: tl.constexpr,
                 HAS_BIAS: tl.constexpr, PROLOGUE: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, BLOCK_ROW: tl.constexpr, PREFETCH: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_start = tl.program_id(1) * K_PER_SPLIT
    n_ok = rn < N
    rstd = 0.0
    if PROLOGUE == 2:  # add + RMSNorm: every program needs the whole row's 1/rms (the row is a few KiB, in L2)
        rr = tl.arange(0, BLOCK_ROW)
        r_ok = rr < K
        srow = (tl.load(X + rr, mask=r_ok, other=0.0).to(tl.float32)
                + tl.load(R + rr, mask=r_ok, other=0.0).to(tl.float32)).to(X.dtype.element_ty)
        if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
            tl.store(RO + rr, srow, mask=r_ok)  # the new residual, written once
        sf = srow.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(sf * sf, 0) / K + eps)
    w_rows = W + rn[:, None].to(tl.int64) * stride_w
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    if PREFETCH:  # the next weight tile is loaded before this one is used: twice the bytes in flight
        k_end = tl.minimum(K, k_start + K_PER_SPLIT)  # this split's end
        rk = k_start + tl.arange(0, BLOCK_K)
        w = tl.load(w_rows + rk[None, :], mask=n_ok[:, None] & (rk < k_end)[None, :], other=0.0)
        for k0 in range(0, K_PER_SPLIT, BLOCK_K):
            rk = k_start + k0 + tl.arange(0, BLOCK_K)
            nk = rk + BLOCK_K
            w_next = tl.load(w_rows + nk[None, :], mask=n_ok[:, None] & (nk < k_end)[None, :], other=0.0)
            x = _gemv_x(X, R, NW, rk, rk < K, K, rstd, PROLOGUE)
            acc += w.to(tl.float32) * x[None, :].to(tl.float32)
            w = w_next
    else:
        for k0 in range(0, K_PER_SPLIT, BLOCK_K):
            rk = k_start + k0 + tl.arange(0, BLOCK_K)
            k_ok = rk < K
            w = tl.load(w_rows + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            x = _gemv_x(X, R, NW, rk, k_ok, K, rstd, PROLOGUE)
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


@dataclass(frozen=True)
class SiluMul:
    """The GEMV's input is ``silu(gate) * up`` of X = ``[gate | up]`` (``[1, 2K]``): ``down_proj`` reads the
    ``gate_up_proj`` output without the activation kernel between them."""

    def unfused(self, x: torch.Tensor) -> torch.Tensor:
        return silu_and_mul(x)

    def fits(self, x: torch.Tensor) -> bool:
        return True


@dataclass
class AddRMSNorm:
    """The GEMV's input is ``rmsnorm(X + residual) * weight``: a layer's norm read in the next projection's
    prologue. The sum (the next residual) is written to ``residual_out`` by the launch."""

    residual: torch.Tensor
    weight: torch.Tensor
    eps: float
    residual_out: Optional[torch.Tensor] = None

    def unfused(self, x: torch.Tensor) -> torch.Tensor:
        h, self.residual_out = fused_add_rmsnorm(x, self.residual, self.weight, self.eps)
        return h

    def fits(self, x: torch.Tensor) -> bool:
        """The kernel rounds in x's dtype throughout: a norm weight of another dtype (whose product the separate
        kernel would promote) takes the unfused path."""
        return self.weight.dtype == self.residual.dtype == x.dtype and self.residual.shape == x.shape


Prologue = Union[SiluMul, AddRMSNorm]


def gemv_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
             scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    if scale is not None:
        weight = (weight.float() * scale.float()[:, None]).to(x.dtype)
    return F.linear(x, weight, bias)


def gemv_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                scale: Optional[torch.Tensor] = None, config: Optional[GemvConfig] = None,
                prologue: Optional[Prologue] = None) -> torch.Tensor:
    """x [1, K], weight [N, K] (row stride >= K, unit column stride; bf16/fp16/fp32, or fp8 with ``scale``
    [N] fp32) -> [1, N] in x's dtype. ``config``: the tiling (default: the table's for this GPU and shape).
    ``prologue``: what the kernel does to x as it loads it (``SiluMul``: x is [1, 2K]; ``AddRMSNorm``)."""
    require_triton()
    N, K = weight.shape
    assert x.shape == (1, 2 * K if isinstance(prologue, SiluMul) else K) and weight.stride(1) == 1
    assert (scale is not None) == (weight.element_size() == 1), "fp8 weights need their per-row scale"
    x = x.contiguous()
    cfg = config or config_for(N, K, weight.element_size(), x.device.index if x.is_cuda else None)
    k_per_split = triton.cdiv(triton.cdiv(K, cfg.split_k), cfg.block_k) * cfg.block_k
    y = torch.empty(1, N, dtype=x.dtype, device=x.device)
    partials = torch.empty(cfg.split_k, N, dtype=torch.float32, device=x.device) if cfg.split_k > 1 else y
    bias_arg = bias if bias is not None else weight
    res = norm_w = res_out = x
    eps, kind = 0.0, 0
    if isinstance(prologue, SiluMul):
        kind = 1
    elif isinstance(prologue, AddRMSNorm):
        kind, eps = 2, prologue.eps
        res, norm_w = prologue.residual.contiguous(), prologue.weight
        assert prologue.fits(x) and norm_w.shape == (K,)
        res_out = prologue.residual_out = torch.empty_like(x)
    _gemv_kernel[(triton.cdiv(N, cfg.block_n), cfg.split_k)](
        weight, scale if scale is not None else weight, x, bias_arg, y, partials, res, norm_w, res_out, N, K,
        weight.stride(0), k_per_split, eps, HAS_SCALE=scale is not None, HAS_BIAS=bias is not None,
        PROLOGUE=kind, SPLIT_K=cfg.split_k, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        BLOCK_ROW=next_pow2(K) if kind == 2 else 16, PREFETCH=cfg.prefetch, **cfg.launch_options())
    if cfg.split_k > 1:
        _splitk_reduce_kernel[(triton.cdiv(N, REDUCE_BLOCK),)](partials, bias_arg, y, N, HAS_BIAS=bias is not None,
                                                                SPLIT_K=cfg.split_k, BLOCK=REDUCE_BLOCK,
                                                                num_warps=4)
    return y


def one_row(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x @ weight.T`` runs on the one-row Triton GEMV: one half-precision CUDA row, a weight with unit
    column stride (bf16/fp16, or fp8 with its scale)."""
    return (ENABLED and x.dim() == 2 and x.shape[0] == 1 and use_triton(x) and weight.stride(1) == 1
            and x.dtype in (torch.bfloat16, torch.float16))


def fusable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a prologue rides that GEMV: ``one_row``, fusion switched on, and not measured slower for this
    shape on this GPU (``gemv_configs.PROLOGUE_SLOWER``)."""
    return (fusions.ON and one_row(x, weight)
            and prologue_pays(*weight.shape, weight.element_size(), x.device.index))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear`` with the one-row CUDA case (bs=1 decode, CUDA-graph capturable) on the Triton GEMV."""
    if one_row(x, weight):
        return gemv_triton(x, weight, bias)
    return F.linear(x, weight, bias)
