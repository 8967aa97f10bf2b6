"""Reference attention in plain torch: gathers each request's K/V through the request-to-token
table into a padded batch and runs SDPA with a prefix-aware causal mask. Used on CPU and as the
oracle for the GPU kernels."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..forward_batch import ForwardBatch
from ..kv_pool import KVPool
from .base import AttentionBackend


@dataclass
class PaddedMeta:
    q_index: torch.Tensor  # [B, Lq] packed row of each (request, query) cell; padding -> 0
    q_valid: torch.Tensor  # [B, Lq] bool
    k_slots: torch.Tensor  # [B, Lk] KV slots; padding -> 0 (scratch slot)
    mask: torch.Tensor | None  # [B, 1, Lq, Lk] bool, True = attend; None: no masking needed
    is_causal: bool = False


class TorchAttnBackend(AttentionBackend):
    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        dev = fb.input_ids.device
        B = fb.batch_size
        lq = max(fb.extend_lens_cpu)
        lk = max(fb.seq_lens_cpu)
        ext = fb.extend_lens.view(B, 1)
        pre = fb.prefix_lens.view(B, 1)
        seq = fb.seq_lens.view(B, 1)
        qi = torch.arange(lq, device=dev).view(1, lq)
        starts = torch.tensor(fb.extend_start_loc_cpu, dtype=torch.int64, device=dev).view(B, 1)
        q_valid = qi < ext
        q_index = torch.where(q_valid, starts + qi, torch.zeros_like(qi))
        kj = torch.arange(lk, device=dev).view(1, lk)
        rows = fb.req_to_token[fb.req_pool_indices]  # [B, max_context]
        k_slots = rows[:, :lk].to(torch.int64)
        k_slots = torch.where(kj < seq, k_slots, torch.zeros_like(k_slots))
        # query i of request b sits at absolute position pre+i and sees keys 0..pre+i
        mask = (kj.view(1, 1, lk) <= (pre + qi).view(B, lq, 1)) & (kj.view(1, 1, lk) < seq.view(B, 1, 1))
        mask |= ~q_valid.view(B, lq, 1) & (kj.view(1, 1, lk) == 0)  # padded queries see one key: no NaN
        single = B == 1 and fb.prefix_lens_cpu[0] == 0
        if fb.is_decode and B == 1:  # one query that sees every key
            fb.attn_metadata = PaddedMeta(q_index, q_valid, k_slots, None)
        elif single:  # one fresh prompt: plain causal attention
            fb.attn_metadata = PaddedMeta(q_index, q_valid, k_slots, None, is_causal=True)
        else:
            fb.attn_metadata = PaddedMeta(q_index, q_valid, k_slots, mask.unsqueeze(1))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int, fb: ForwardBatch,
                kv_pool: KVPool, scale: float, kv_stored: bool = False) -> torch.Tensor:
        if not kv_stored:
            kv_pool.set_kv(layer_id, fb.out_cache_loc, k, v)
        m: PaddedMeta = fb.attn_metadata
        B, lq = m.q_index.shape
        qp = q[m.q_index].transpose(1, 2)  # [B, Hq, Lq, D]
        kp, vp = kv_pool.read_kv(layer_id, m.k_slots, q.dtype)  # [B, Lk, Hkv, D], fp8 dequantized
        kp, vp = kp.transpose(1, 2), vp.transpose(1, 2)  # [B, Hkv, Lk, D]
        out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=m.mask, is_causal=m.is_causal, scale=scale,
                                             enable_gqa=self.num_q_heads != self.num_kv_heads)
        out = out.transpose(1, 2)[m.q_valid]  # [T, Hq, D] in packed order (requests are contiguous)
        return out.reshape(out.shape[0], -1)
