"""Extend (prefill) attention with a cached prefix, over the request-to-token table.

The new tokens' K/V are already in the pool (the backend stores them first), so every key of a
request is read through ``req_to_token[row, :seq_len]``: new token ``i`` of a request with prefix
``p`` sees keys ``0 .. p + i``. Requests are ragged: their queries are packed, ``extend_start_loc``
says where each request's rows begin.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._triton import jit, next_pow2, require_triton, tl, use_triton


def extend_attention_ref(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
                         req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, prefix_lens: torch.Tensor,
                         extend_lens: torch.Tensor, sm_scale: float, k_scale: float = 1.0,
                         v_scale: float = 1.0) -> torch.Tensor:
    """Oracle in float32: packed q [T, Hq, D] -> [T, Hq, D] in q's dtype.
    The buffers may be fp8: a key reads as ``k_buffer.float() * k_scale`` (values likewise)."""
    Hq = q.shape[1]
    group = Hq // k_buffer.shape[1]
    out = torch.empty_like(q)
    start = 0
    for row, p, e in zip(req_pool_indices.tolist(), prefix_lens.tolist(), extend_lens.tolist()):
        slots = req_to_token[row, :p + e].long()
        k = (k_buffer[slots].float() * k_scale).repeat_interleave(group, dim=1)  # [p+e, Hq, D]
        v = (v_buffer[slots].float() * v_scale).repeat_interleave(group, dim=1)
        s = torch.einsum("ihd,jhd->hij", q[start:start + e].float(), k) * sm_scale
        visible = torch.arange(p + e).view(1, -1) <= (p + torch.arange(e)).view(-1, 1)
        s = s.masked_fill(~visible.to(s.device), float("-inf"))
        out[start:start + e] = torch.einsum("hij,jhd->ihd", s.softmax(-1), v).to(q.dtype)
        start += e
    return out


@jit
def _extend_kernel(Q, K, V, O, ReqToToken, ReqPoolIdx, PrefixLens, ExtendLens, ExtendStart, sm_scale, v_scale,
                   stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_rt,
                   GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, IEEE: tl.constexpr, KV_FP8: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    mblk = tl.program_id(2)
    kvh = h // GROUP
    ext_len = tl.load(ExtendLens + b).to(tl.int32)
    prefix = tl.load(PrefixLens + b).to(tl.int32)
    q_start = tl.load(ExtendStart + b).to(tl.int64)
    row = tl.load(ReqPoolIdx + b).to(tl.int64)

    offs_m = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < ext_len
    mask_d = offs_d < HEAD_DIM
    q = tl.load(Q + (q_start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    q_pos = prefix + offs_m
    # keys this block of queries can see; none for a block past the request's end (ragged grid)
    end = tl.minimum(prefix + ext_len, prefix + (mblk + 1) * BLOCK_M)
    end = tl.where(mblk * BLOCK_M < ext_len, end, 0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n0 in range(0, end, BLOCK_N):
        pos = n0 + offs_n
        mask_n = pos < end
        slot = tl.load(ReqToToken + row * stride_rt + pos, mask=mask_n, other=0).to(tl.int64)
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(K + slot[:, None] * stride_kt + kvh * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
        if IEEE:
            qk = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision="ieee")
        else:
            qk = tl.dot(q, tl.trans(k.to(q.dtype)))
        visible = (pos[None, :] <= q_pos[:, None]) & mask_n[None, :]
        qk = tl.where(visible, qk * sm_scale, float("-inf"))
        # key 0 is in the first tile and visible to every row, so m_new is finite from then on
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + slot[:, None] * stride_vt + kvh * stride_vh + offs_d[None, :], mask=kv_mask, other=0.0)
        if IEEE:
            pv = tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision="ieee")
        else:
            pv = tl.dot(p.to(q.dtype), v.to(q.dtype))
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    if KV_FP8:  # fp8 values were read unscaled (the key scale is folded into sm_scale)
        out = out * v_scale
    tl.store(O + (q_start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def extend_attention_triton(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
                            req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, prefix_lens: torch.Tensor,
                            extend_lens: torch.Tensor, sm_scale: float, max_extend_len: Optional[int] = None,
                            extend_start_loc: Optional[torch.Tensor] = None,
                            out: Optional[torch.Tensor] = None, k_scale: float = 1.0,
                            v_scale: float = 1.0) -> torch.Tensor:
    """Packed q [T, Hq, D] -> [T, Hq, D]. Pass ``max_extend_len`` (a host int) to avoid a device sync.
    An fp8 (e4m3) pool is upcast tile by tile, ``k_scale`` folded into the softmax scale and ``v_scale``
    applied to the output (both ignored for a bf16/fp32 pool, whose kernel is unchanged)."""
    require_triton()
    T, Hq, D = q.shape
    Hkv = k_buffer.shape[1]
    if Hq % Hkv:
        raise ValueError(f"query heads ({Hq}) must be a multiple of KV heads ({Hkv})")
    assert q.stride(-1) == 1 and k_buffer.stride(-1) == 1 and v_buffer.stride(-1) == 1
    B = extend_lens.shape[0]
    if out is None:  # contiguous even when q is a view of a fused qkv
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if T == 0 or B == 0:
        return out
    if max_extend_len is None:
        max_extend_len = int(extend_lens.max())
    if extend_start_loc is None:
        extend_start_loc = torch.cumsum(extend_lens, 0) - extend_lens
    block_d = next_pow2(D)
    block_m, block_n = (64, 64) if block_d <= 128 else (32, 32)
    ieee = q.dtype == torch.float32
    fp8 = k_buffer.dtype == torch.float8_e4m3fn
    if ieee:  # float32 tiles take twice the shared memory
        block_m, block_n = min(block_m, 32), min(block_n, 32)
    grid = (B, Hq, -(-max_extend_len // block_m))
    _extend_kernel[grid](
        q, k_buffer, v_buffer, out, req_to_token, req_pool_indices, prefix_lens, extend_lens, extend_start_loc,
        sm_scale * k_scale if fp8 else sm_scale, v_scale, q.stride(0), q.stride(1), k_buffer.stride(0),
        k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1), out.stride(0), out.stride(1),
        req_to_token.stride(0), GROUP=Hq // Hkv, HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        IEEE=ieee, KV_FP8=fp8, num_warps=4, num_stages=2)
    return out


def extend_attention(q, k_buffer, v_buffer, req_to_token, req_pool_indices, prefix_lens, extend_lens, sm_scale,
                     **kwargs):
    """Triton on CUDA, the torch reference elsewhere."""
    if use_triton(q):
        return extend_attention_triton(q, k_buffer, v_buffer, req_to_token, req_pool_indices, prefix_lens,
                                       extend_lens, sm_scale, **kwargs)
    return extend_attention_ref(q, k_buffer, v_buffer, req_to_token, req_pool_indices, prefix_lens, extend_lens,
                                sm_scale, kwargs.get("k_scale", 1.0), kwargs.get("v_scale", 1.0))
