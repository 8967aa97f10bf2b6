"""Paged decode attention over the request-to-token table (one query token per request, GQA).

Flash-decoding: stage 1 splits each request's keys into ``num_kv_splits`` chunks and, per
(request, KV head, chunk), attends all query heads of that KV group at once (K/V read once per
group); stage 2 merges the chunks by their log-sum-exp. Shapes depend only on the batch size and
every length is read on the device, so a launch is CUDA-graph capturable (no host sync).
"""
from __future__ import annotations

from typing import Optional

import torch

from ._triton import jit, next_pow2, require_triton, tl, use_triton

BLOCK_N = 64  # keys per tile; a split covers a multiple of it


def decode_attention_ref(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
                         req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                         sm_scale: float, k_scale: float = 1.0, v_scale: float = 1.0) -> torch.Tensor:
    """Oracle in float32: q [B, Hq, D], k/v_buffer [slots, Hkv, D] -> [B, Hq, D] in q's dtype.
    The buffers may be fp8: a key reads as ``k_buffer.float() * k_scale`` (values likewise)."""
    B, Hq, D = q.shape
    group = Hq // k_buffer.shape[1]
    out = torch.empty_like(q)
    for b, (row, n) in enumerate(zip(req_pool_indices.tolist(), seq_lens.tolist())):
        slots = req_to_token[row, :n].long()
        k = (k_buffer[slots].float() * k_scale).repeat_interleave(group, dim=1)  # [n, Hq, D]
        v = (v_buffer[slots].float() * v_scale).repeat_interleave(group, dim=1)
        s = torch.einsum("hd,nhd->hn", q[b].float(), k) * sm_scale
        out[b] = torch.einsum("hn,nhd->hd", s.softmax(-1), v).to(q.dtype)
    return out


def choose_num_kv_splits(batch_size: int, num_kv_heads: int, num_sms: int = 132, max_splits: int = 32) -> int:
    """Enough (request, KV head, split) programs to give every multiprocessor about two."""
    want = -(-2 * num_sms // max(1, batch_size * num_kv_heads))
    return max(1, min(max_splits, want))


@jit
def _decode_split_kernel(Q, K, V, ReqToToken, ReqPoolIdx, SeqLens, MidO, MidLse, sm_scale, v_scale, num_kv_splits,
                         stride_qb, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_rt,
                         stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
                         GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr, KV_FP8: tl.constexpr):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(SeqLens + b).to(tl.int32)
    row = tl.load(ReqPoolIdx + b).to(tl.int64)
    per_split = tl.cdiv(tl.cdiv(seq_len, num_kv_splits), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, seq_len)

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_h = offs_h < GROUP
    mask_d = offs_d < HEAD_DIM
    heads = kvh * GROUP + offs_h
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=mask_h[:, None] & mask_d[None, :], other=0.0)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + offs_n
        mask_n = pos < end
        slot = tl.load(ReqToToken + row * stride_rt + pos, mask=mask_n, other=0).to(tl.int64)
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(K + slot[:, None] * stride_kt + kvh * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
        if IEEE:
            qk = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision="ieee")
        else:
            qk = tl.dot(q, tl.trans(k.to(q.dtype)))
        qk = tl.where(mask_n[None, :], qk * sm_scale, float("-inf"))
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

    has = l_i > 0  # an empty split (short request) leaves lse = -inf: stage 2 gives it no weight
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    if KV_FP8:  # fp8 values were read unscaled (the key scale is folded into sm_scale)
        out = out * v_scale
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
    tl.store(MidO + b * stride_ob + heads[:, None] * stride_oh + split * stride_os + offs_d[None, :], out,
             mask=mask_h[:, None] & mask_d[None, :])
    tl.store(MidLse + b * stride_lb + heads * stride_lh + split, lse, mask=mask_h)


@jit
def _decode_merge_kernel(MidO, MidLse, O, SeqLens, num_kv_splits, stride_ob, stride_oh, stride_os, stride_lb,
                         stride_lh, stride_b, stride_h, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    seq_len = tl.load(SeqLens + b).to(tl.int32)
    per_split = tl.cdiv(tl.cdiv(seq_len, num_kv_splits), BLOCK_N) * BLOCK_N
    used = tl.cdiv(seq_len, tl.maximum(per_split, 1))  # short requests leave the last splits empty: skip them
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    acc = tl.zeros([BLOCK_D], tl.float32)
    den = tl.sum(acc, 0)  # loop-carried scalars start as float32 tensors
    m = den + float("-inf")
    for s in range(0, used):
        lse = tl.load(MidLse + b * stride_lb + h * stride_lh + s)
        o = tl.load(MidO + b * stride_ob + h * stride_oh + s * stride_os + offs_d, mask=mask_d, other=0.0)
        m_new = tl.maximum(m, lse)
        finite = m_new > float("-inf")
        alpha = tl.where(finite, tl.exp(m - m_new), 0.0)
        w = tl.where(finite, tl.exp(lse - m_new), 0.0)
        acc = acc * alpha + w * o
        den = den * alpha + w
        m = m_new
    out = acc / tl.where(den > 0, den, 1.0)  # a row with seq_len 0 (graph padding) comes out as zeros
    tl.store(O + b * stride_b + h * stride_h + offs_d, out.to(O.dtype.element_ty), mask=mask_d)


def decode_attention_triton(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
                            req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                            sm_scale: float, num_kv_splits: int = 8, out: Optional[torch.Tensor] = None,
                            mid_o: Optional[torch.Tensor] = None, mid_lse: Optional[torch.Tensor] = None,
                            k_scale: float = 1.0, v_scale: float = 1.0) -> torch.Tensor:
    """q [B, Hq, D] (last dim contiguous), k/v_buffer [slots, Hkv, D] -> out [B, Hq, D].

    An fp8 (e4m3) pool is upcast tile by tile: ``k_scale`` folds into the softmax scale, ``v_scale``
    multiplies each split's output (both ignored for a bf16/fp32 pool, whose kernel is unchanged).

    ``mid_o`` [>=B, Hq, num_kv_splits, D] and ``mid_lse`` [>=B, Hq, num_kv_splits] float32 scratch may be
    passed in (preallocated for CUDA graphs); otherwise they are allocated here."""
    require_triton()
    B, Hq, D = q.shape
    Hkv = k_buffer.shape[1]
    if Hq % Hkv:
        raise ValueError(f"query heads ({Hq}) must be a multiple of KV heads ({Hkv})")
    group = Hq // Hkv
    assert q.stride(-1) == 1 and k_buffer.stride(-1) == 1 and v_buffer.stride(-1) == 1
    if out is None:  # contiguous even when q is a view of a fused qkv
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if mid_o is None:
        mid_o = torch.empty(B, Hq, num_kv_splits, D, dtype=torch.float32, device=q.device)
        mid_lse = torch.empty(B, Hq, num_kv_splits, dtype=torch.float32, device=q.device)
    if B == 0:
        return out
    block_d = next_pow2(D)
    ieee = q.dtype == torch.float32
    fp8 = k_buffer.dtype == torch.float8_e4m3fn
    _decode_split_kernel[(B, Hkv, num_kv_splits)](
        q, k_buffer, v_buffer, req_to_token, req_pool_indices, seq_lens, mid_o, mid_lse,
        sm_scale * k_scale if fp8 else sm_scale, v_scale, num_kv_splits,
        q.stride(0), q.stride(1), k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1),
        req_to_token.stride(0), mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0),
        mid_lse.stride(1), GROUP=group, HEAD_DIM=D, BLOCK_H=max(16, next_pow2(group)), BLOCK_N=BLOCK_N,
        BLOCK_D=block_d, IEEE=ieee, KV_FP8=fp8, num_warps=4, num_stages=2)
    _decode_merge_kernel[(B, Hq)](
        mid_o, mid_lse, out, seq_lens, num_kv_splits, mid_o.stride(0), mid_o.stride(1), mid_o.stride(2),
        mid_lse.stride(0), mid_lse.stride(1), out.stride(0), out.stride(1), HEAD_DIM=D, BLOCK_D=block_d,
        BLOCK_N=BLOCK_N, num_warps=2)
    return out


def decode_attention(q, k_buffer, v_buffer, req_to_token, req_pool_indices, seq_lens, sm_scale, **kwargs):
    """Triton on CUDA, the torch reference elsewhere."""
    if use_triton(q):
        return decode_attention_triton(q, k_buffer, v_buffer, req_to_token, req_pool_indices, seq_lens, sm_scale,
                                       **kwargs)
    return decode_attention_ref(q, k_buffer, v_buffer, req_to_token, req_pool_indices, seq_lens, sm_scale,
                                kwargs.get("k_scale", 1.0), kwargs.get("v_scale", 1.0))
