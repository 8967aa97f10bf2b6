"""Scatter this step's K and V rows into the per-layer pool at ``out_cache_loc``, one launch for both.

An fp8 (e4m3) pool stores ``x / scale`` saturated to +-448 (a plain cast of a larger value gives NaN)."""
from __future__ import annotations

import os

import torch

from ._triton import HAS_TRITON, jit, next_pow2, require_triton, tl, triton, use_triton

FP8_E4M3_MAX = 448.0

if HAS_TRITON:
    @triton.jit
    def _round_to_e4m3_grid(x):
        """``x`` (float32, |x| <= 448) rounded half-to-even onto the e4m3 grid, in float32 arithmetic: adding
        1.5 * 2^23 * ulp makes the float32 add round at the e4m3 ulp of ``x`` (2^-9 for subnormals)."""
        e = (x.to(tl.int32, bitcast=True) >> 23) & 0xFF
        ulp = (tl.maximum(e - 3, 118) << 23).to(tl.float32, bitcast=True)
        c = ulp * 12582912.0
        r = (x + c) - c
        return tl.where(r == 0.0, x * 0.0, r)  # an underflow keeps its sign (-0.0), as the cast gives


def _is_fp8(buffer: torch.Tensor) -> bool:
    return buffer.dtype == torch.float8_e4m3fn


def quantize_fp8(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x / scale`` (as ``x * (1 / scale)`` in float32, the kernel's arithmetic) saturated to +-448, rounded
    half-to-even to e4m3."""
    return (x.float() * (1.0 / scale)).clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)


def store_kv_ref(k_buffer: torch.Tensor, v_buffer: torch.Tensor, loc: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    if _is_fp8(k_buffer):
        k_buffer[loc] = quantize_fp8(k, k_scale)
        v_buffer[loc] = quantize_fp8(v, v_scale)
        return
    k_buffer[loc] = k.to(k_buffer.dtype)
    v_buffer[loc] = v.to(v_buffer.dtype)


@jit
def _store_kv_kernel(K, V, KBuf, VBuf, Loc, stride_kt, stride_kh, stride_vt, stride_vh, stride_bk, stride_bv,
                     H, inv_k_scale, inv_v_scale, D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
                     FP8: tl.constexpr, ROUND_FP32: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(Loc + t).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h < H)[:, None] & (offs_d < D)[None, :]
    dst = offs_h[:, None] * D + offs_d[None, :]  # pool rows are contiguous [H, D]
    k = tl.load(K + t * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
    if FP8:
        k = tl.minimum(tl.maximum(k.to(tl.float32) * inv_k_scale, -448.0), 448.0)
        if ROUND_FP32:
            k = _round_to_e4m3_grid(k)
    tl.store(KBuf + slot * stride_bk + dst, k.to(KBuf.dtype.element_ty), mask=mask)
    v = tl.load(V + t * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
    if FP8:
        v = tl.minimum(tl.maximum(v.to(tl.float32) * inv_v_scale, -448.0), 448.0)
        if ROUND_FP32:
            v = _round_to_e4m3_grid(v)
    tl.store(VBuf + slot * stride_bv + dst, v.to(VBuf.dtype.element_ty), mask=mask)


def _interpreted() -> bool:
    """Triton's interpreter rounds float32 -> e4m3 wrongly (a mantissa carry drops the value to half: 7.75
    -> 4.0): round onto the e4m3 grid first so its cast is exact. Compiled kernels use the hardware cast."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def store_kv_triton(k_buffer: torch.Tensor, v_buffer: torch.Tensor, loc: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """k/v [T, Hkv, D] (last dim contiguous) -> k/v_buffer[loc[t]]; the pool is [slots, Hkv, D] contiguous.
    ``k_scale``/``v_scale`` only matter for an fp8 pool."""
    require_triton()
    T, H, D = k.shape
    assert k_buffer.is_contiguous() and v_buffer.is_contiguous() and k.stride(-1) == 1 and v.stride(-1) == 1
    if T == 0:
        return
    _store_kv_kernel[(T,)](k, v, k_buffer, v_buffer, loc, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                           k_buffer.stride(0), v_buffer.stride(0), H, 1.0 / k_scale, 1.0 / v_scale, D=D,
                           BLOCK_H=next_pow2(H), BLOCK_D=next_pow2(D), FP8=_is_fp8(k_buffer),
                           ROUND_FP32=_interpreted(), num_warps=4)


def store_kv(k_buffer, v_buffer, loc, k, v, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    if use_triton(k):
        store_kv_triton(k_buffer, v_buffer, loc, k, v, k_scale, v_scale)
    else:
        store_kv_ref(k_buffer, v_buffer, loc, k, v, k_scale, v_scale)
