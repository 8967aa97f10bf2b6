"""The attention layer: hands q/k/v of this step to the engine's attention backend."""
from __future__ import annotations

import torch
from torch import nn

from ..forward_batch import ForwardBatch


class PagedAttention(nn.Module):
    def __init__(self, layer_id: int, num_q_heads: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.layer_id = layer_id
        self.num_q_heads, self.num_kv_heads, self.head_dim = num_q_heads, num_kv_heads, head_dim
        self.scale = head_dim ** -0.5

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fb: ForwardBatch,
                kv_stored: bool = False) -> torch.Tensor:
        """``kv_stored``: k/v are already in the pool at ``fb.out_cache_loc`` (the RoPE + store kernel)."""
        return fb.extra["attn"].forward(q, k, v, self.layer_id, fb, fb.extra["kv_pool"], self.scale, kv_stored)
