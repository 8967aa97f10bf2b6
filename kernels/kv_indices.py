"""Flatten each request's row of the request-to-token table into one index list (FlashInfer's
paged-KV ``indices`` with page size 1): ``out[indptr[b] : indptr[b] + seq_lens[b]] = req_to_token[row_b, :seq_len_b]``."""
from __future__ import annotations

import torch

from ._triton import jit, require_triton, tl, use_triton


def build_kv_indices_ref(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                         kv_indptr: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    for b, (row, n) in enumerate(zip(req_pool_indices.tolist(), seq_lens.tolist())):
        start = int(kv_indptr[b])
        out[start:start + n] = req_to_token[row, :n].to(out.dtype)
    return out


@jit
def _kv_indices_kernel(ReqToToken, ReqPoolIdx, SeqLens, Indptr, Out, stride_rt, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    row = tl.load(ReqPoolIdx + b).to(tl.int64)
    n = tl.load(SeqLens + b).to(tl.int32)
    start = tl.load(Indptr + b).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    for i in range(0, n, BLOCK):
        mask = i + offs < n
        slot = tl.load(ReqToToken + row * stride_rt + i + offs, mask=mask)
        tl.store(Out + start + i + offs, slot.to(Out.dtype.element_ty), mask=mask)


def build_kv_indices(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                     kv_indptr: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """All tensors on one device; ``out`` int32 with at least ``kv_indptr[-1]`` entries."""
    if not use_triton(out):
        return build_kv_indices_ref(req_to_token, req_pool_indices, seq_lens, kv_indptr, out)
    require_triton()
    B = req_pool_indices.shape[0]
    if B:
        _kv_indices_kernel[(B,)](req_to_token, req_pool_indices, seq_lens, kv_indptr, out, req_to_token.stride(0),
                                 BLOCK=512, num_warps=4)
    return out
