"""Scatter this step's K and V rows into the per-layer pool at ``out_cache_loc``, one launch for both.

An fp8 (e4m3) pool stores ``x / scale`` saturated to +-448 (a plain cast of a larger value gives NaN).
``rope_store_kv_triton`` also rotates the q and k heads of the fused qkv projection in place first (neox
rotary, as ``kernels/rope.py``): on every CUDA forward the rotation and the store are one launch, not two."""
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

    @triton.jit
    def _pool_value(x, inv_scale, FP8: tl.constexpr, ROUND_FP32: tl.constexpr):
        """``x`` as the pool keeps it (before the store's cast): an fp8 pool's ``x / scale`` saturated to +-448."""
        if FP8:
            x = tl.minimum(tl.maximum(x.to(tl.float32) * inv_scale, -448.0), 448.0)
            if ROUND_FP32:
                x = _round_to_e4m3_grid(x)
        return x


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
    tl.store(KBuf + slot * stride_bk + dst, _pool_value(k, inv_k_scale, FP8, ROUND_FP32).to(KBuf.dtype.element_ty),
             mask=mask)
    v = tl.load(V + t * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
    tl.store(VBuf + slot * stride_bv + dst, _pool_value(v, inv_v_scale, FP8, ROUND_FP32).to(VBuf.dtype.element_ty),
             mask=mask)


@jit
def _rope_store_kv_kernel(QKV, KBuf, VBuf, Loc, Pos, Cos, Sin, stride_t, stride_bk, stride_bv, stride_c, stride_s,
                          HQ, HKV, inv_k_scale, inv_v_scale, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                          BLOCK_HALF: tl.constexpr, FP8: tl.constexpr, ROUND_FP32: tl.constexpr):
    """Heads ``[0, HQ)`` are q, ``[HQ, HQ+HKV)`` k, then v (each ``2 * HALF`` wide, one token's row of qkv)."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_HALF)
    d_ok = d < HALF
    pos = tl.load(Pos + t).to(tl.int64)
    slot = tl.load(Loc + t).to(tl.int64)
    cos = tl.load(Cos + pos * stride_c + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(Sin + pos * stride_s + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    src = QKV + t * stride_t + h[:, None] * (2 * HALF) + d[None, :]
    rot = (h < HQ + HKV)[:, None] & d_ok[None, :]
    x1 = tl.load(src, mask=rot, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=rot, other=0.0).to(tl.float32)
    y1 = (x1 * cos - x2 * sin).to(QKV.dtype.element_ty)
    y2 = (x2 * cos + x1 * sin).to(QKV.dtype.element_ty)
    tl.store(src, y1, mask=rot)  # rotated in place, as kernels/rope.py leaves q and k
    tl.store(src + HALF, y2, mask=rot)
    kh = h - HQ
    is_k = ((kh >= 0) & (kh < HKV))[:, None] & d_ok[None, :]
    dst_k = KBuf + slot * stride_bk + kh[:, None] * (2 * HALF) + d[None, :]
    tl.store(dst_k, _pool_value(y1, inv_k_scale, FP8, ROUND_FP32).to(KBuf.dtype.element_ty), mask=is_k)
    tl.store(dst_k + HALF, _pool_value(y2, inv_k_scale, FP8, ROUND_FP32).to(KBuf.dtype.element_ty), mask=is_k)
    vh = h - HQ - HKV
    is_v = ((vh >= 0) & (vh < HKV))[:, None] & d_ok[None, :]
    dst_v = VBuf + slot * stride_bv + vh[:, None] * (2 * HALF) + d[None, :]
    v1 = tl.load(src, mask=is_v, other=0.0)
    v2 = tl.load(src + HALF, mask=is_v, other=0.0)
    tl.store(dst_v, _pool_value(v1, inv_v_scale, FP8, ROUND_FP32).to(VBuf.dtype.element_ty), mask=is_v)
    tl.store(dst_v + HALF, _pool_value(v2, inv_v_scale, FP8, ROUND_FP32).to(VBuf.dtype.element_ty), mask=is_v)


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


def rope_store_kv_triton(qkv: torch.Tensor, num_q_heads: int, num_kv_heads: int, positions: torch.Tensor,
                         cos_cache: torch.Tensor, sin_cache: torch.Tensor, k_buffer: torch.Tensor,
                         v_buffer: torch.Tensor, loc: torch.Tensor, k_scale: float = 1.0,
                         v_scale: float = 1.0) -> None:
    """qkv [T, (Hq + 2 Hkv) * D] (rows may be strided, heads contiguous): rotate its q and k heads in place at
    ``positions`` (cos/sin caches as ``kernels/rope.py`` reads them), then store k and v at ``loc``."""
    require_triton()
    T = qkv.shape[0]
    heads = num_q_heads + 2 * num_kv_heads
    D = qkv.shape[1] // heads
    assert qkv.shape[1] == heads * D and D % 2 == 0 and qkv.stride(1) == 1
    assert k_buffer.is_contiguous() and v_buffer.is_contiguous() and k_buffer.shape[1:] == (num_kv_heads, D)
    if T == 0:
        return
    block_h = min(16, next_pow2(heads))
    _rope_store_kv_kernel[(T, -(-heads // block_h))](
        qkv, k_buffer, v_buffer, loc, positions, cos_cache, sin_cache, qkv.stride(0), k_buffer.stride(0),
        v_buffer.stride(0), cos_cache.stride(0), sin_cache.stride(0), num_q_heads, num_kv_heads, 1.0 / k_scale,
        1.0 / v_scale, HALF=D // 2, BLOCK_H=block_h, BLOCK_HALF=next_pow2(D // 2), FP8=_is_fp8(k_buffer),
        ROUND_FP32=_interpreted(), num_warps=4)
