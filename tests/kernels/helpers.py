"""Builders shared by the kernel tests."""
from __future__ import annotations

import torch


def make_paged(batch: int, hq: int, hkv: int, d: int, prefix_lens: list[int], extend_lens: list[int],
               dtype: torch.dtype, device: str, seed: int = 0, spare_rows: int = 3, spare_slots: int = 50):
    """A KV pool with scattered slots (shuffled, slot 0 kept as scratch) and a request-to-token
    table whose rows are shuffled too: what a fragmented pool looks like after hours of serving."""
    g = torch.Generator().manual_seed(seed)
    seq = [p + e for p, e in zip(prefix_lens, extend_lens)]
    n_slots = sum(seq) + spare_slots + 1
    k_buf = torch.randn(n_slots, hkv, d, generator=g).to(dtype)
    v_buf = torch.randn(n_slots, hkv, d, generator=g).to(dtype)
    perm = torch.randperm(n_slots - 1, generator=g) + 1
    rows = torch.randperm(batch + spare_rows, generator=g)[:batch]
    max_ctx = max(seq) + 17
    r2t = torch.zeros(batch + spare_rows, max_ctx, dtype=torch.int32)
    at = 0
    for b, n in enumerate(seq):
        r2t[rows[b], :n] = perm[at:at + n].to(torch.int32)
        at += n
    to = lambda x: x.to(device)  # noqa: E731
    return dict(k_buffer=to(k_buf), v_buffer=to(v_buf), req_to_token=to(r2t), req_pool_indices=to(rows),
                seq_lens=to(torch.tensor(seq)), prefix_lens=to(torch.tensor(prefix_lens)),
                extend_lens=to(torch.tensor(extend_lens)))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
