"""SiLU-and-multiply over the fused [gate | up] projection: one pass instead of three kernels.
Rounding follows HF Llama: silu(gate) rounded to the activation dtype, then multiplied by up."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._triton import jit, next_pow2, require_triton, tl, use_triton


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


@jit
def _silu_mul_kernel(X, Out, stride_x, stride_o, N, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    g = tl.load(X + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(X + row * stride_x + N + offs, mask=mask, other=0.0)
    s = (g / (1.0 + tl.exp(-g))).to(X.dtype.element_ty)
    tl.store(Out + row * stride_o + offs, (s.to(tl.float32) * u.to(tl.float32)).to(Out.dtype.element_ty), mask=mask)


def silu_and_mul_triton(x: torch.Tensor) -> torch.Tensor:
    require_triton()
    n = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x2.shape[0], n, dtype=x.dtype, device=x.device)
    block = min(1024, next_pow2(n))
    if x2.shape[0]:
        _silu_mul_kernel[(x2.shape[0], -(-n // block))](x2, out, x2.stride(0), out.stride(0), n, BLOCK=block,
                                                          num_warps=4)
    return out.view(*x.shape[:-1], n)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return silu_and_mul_triton(x) if use_triton(x) else silu_and_mul_ref(x)
