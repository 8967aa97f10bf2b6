"""Rotary embedding, neox (rotate-half) style, from a precomputed cos/sin cache.

Any rope scaling (linear, Llama-3) lives in the cache, built by the model's rotary layer; the
cache may hold the full duplicated width ``[max_pos, D]`` (HF layout) or only ``[max_pos, D/2]``."""
from __future__ import annotations

import torch

from ._triton import jit, next_pow2, require_triton, tl, use_triton


def apply_rope_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_cache: torch.Tensor,
                   sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, Hq, D], k [T, Hkv, D] -> rotated copies (math in float32, rounded once)."""
    half = q.shape[-1] // 2
    cos = cos_cache[positions, :half].float().unsqueeze(1)
    sin = sin_cache[positions, :half].float().unsqueeze(1)

    def rot(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float()[..., :half], x.float()[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)

    return rot(q), rot(k)


@jit
def _rope_kernel(X, Out, Pos, Cos, Sin, stride_xt, stride_xh, stride_ot, stride_oh, stride_c, stride_s, H,
                 HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(Pos + t).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_HALF)
    mask_d = offs_d < HALF
    cos = tl.load(Cos + pos * stride_c + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(Sin + pos * stride_s + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_h < H)[:, None] & mask_d[None, :]
    src = X + t * stride_xt + offs_h[:, None] * stride_xh + offs_d[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    dst = Out + t * stride_ot + offs_h[:, None] * stride_oh + offs_d[None, :]
    tl.store(dst, (x1 * cos - x2 * sin).to(Out.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, (x2 * cos + x1 * sin).to(Out.dtype.element_ty), mask=mask)


def _rope_one(x: torch.Tensor, out: torch.Tensor, positions: torch.Tensor, cos_cache: torch.Tensor,
              sin_cache: torch.Tensor) -> None:
    T, H, D = x.shape
    if T == 0:
        return
    assert x.stride(-1) == 1 and out.stride(-1) == 1 and D % 2 == 0
    block_h = min(16, next_pow2(H))
    _rope_kernel[(T, -(-H // block_h))](
        x, out, positions, cos_cache, sin_cache, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        cos_cache.stride(0), sin_cache.stride(0), H, HALF=D // 2, BLOCK_H=block_h, BLOCK_HALF=next_pow2(D // 2),
        num_warps=4)


def apply_rope_triton(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_cache: torch.Tensor,
                      sin_cache: torch.Tensor, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, Hq, D], k [T, Hkv, D] (views of a fused qkv are fine) -> rotated; ``inplace`` overwrites q, k."""
    require_triton()
    q_out = q if inplace else torch.empty_like(q, memory_format=torch.contiguous_format)
    k_out = k if inplace else torch.empty_like(k, memory_format=torch.contiguous_format)
    _rope_one(q, q_out, positions, cos_cache, sin_cache)
    _rope_one(k, k_out, positions, cos_cache, sin_cache)
    return q_out, k_out


def rope_inplace(x: torch.Tensor, positions: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor) -> None:
    """Rotate x [T, H, D] in place: q and k heads of a fused qkv projection in one launch."""
    require_triton()
    _rope_one(x, x, positions, cos_cache, sin_cache)


def apply_rope(q, k, positions, cos_cache, sin_cache, inplace: bool = False):
    if use_triton(q):
        return apply_rope_triton(q, k, positions, cos_cache, sin_cache, inplace=inplace)
    q2, k2 = apply_rope_ref(q, k, positions, cos_cache, sin_cache)
    if inplace:
        q.copy_(q2)
        k.copy_(k2)
        return q, k
    return q2, k2
