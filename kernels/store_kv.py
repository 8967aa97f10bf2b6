"""Scatter this step's K and V rows into the per-layer pool at ``out_cache_loc``, one launch for both."""
from __future__ import annotations

import torch

from ._triton import jit, next_pow2, require_triton, tl, use_triton


def store_kv_ref(k_buffer: torch.Tensor, v_buffer: torch.Tensor, loc: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor) -> None:
    k_buffer[loc] = k.to(k_buffer.dtype)
    v_buffer[loc] = v.to(v_buffer.dtype)


@jit
def _store_kv_kernel(K, V, KBuf, VBuf, Loc, stride_kt, stride_kh, stride_vt, stride_vh, stride_bk, stride_bv,
                     H, D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(Loc + t).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h < H)[:, None] & (offs_d < D)[None, :]
    dst = offs_h[:, None] * D + offs_d[None, :]  # pool rows are contiguous [H, D]
    k = tl.load(K + t * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
    tl.store(KBuf + slot * stride_bk + dst, k.to(KBuf.dtype.element_ty), mask=mask)
    v = tl.load(V + t * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
    tl.store(VBuf + slot * stride_bv + dst, v.to(VBuf.dtype.element_ty), mask=mask)


def store_kv_triton(k_buffer: torch.Tensor, v_buffer: torch.Tensor, loc: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor) -> None:
    """k/v [T, Hkv, D] (last dim contiguous) -> k/v_buffer[loc[t]]; the pool is [slots, Hkv, D] contiguous."""
    require_triton()
    T, H, D = k.shape
    assert k_buffer.is_contiguous() and v_buffer.is_contiguous() and k.stride(-1) == 1 and v.stride(-1) == 1
    if T == 0:
        return
    _store_kv_kernel[(T,)](k, v, k_buffer, v_buffer, loc, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                           k_buffer.stride(0), v_buffer.stride(0), H, D=D, BLOCK_H=next_pow2(H),
                           BLOCK_D=next_pow2(D), num_warps=4)


def store_kv(k_buffer, v_buffer, loc, k, v) -> None:
    if use_triton(k):
        store_kv_triton(k_buffer, v_buffer, loc, k, v)
    else:
        store_kv_ref(k_buffer, v_buffer, loc, k, v)
