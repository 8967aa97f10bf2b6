"""The attention-backend interface: store this step's K/V, then attend over each request's slots."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..forward_batch import ForwardBatch
from ..kv_pool import KVPool


class AttentionBackend(ABC):
    """One instance per engine; ``init_forward_metadata`` runs once per forward, before the layers."""

    def __init__(self, num_q_heads: int, num_kv_heads: int, head_dim: int, device: torch.device, **kwargs):
        self.num_q_heads, self.num_kv_heads, self.head_dim = num_q_heads, num_kv_heads, head_dim
        self.device = device

    @abstractmethod
    def init_forward_metadata(self, fb: ForwardBatch) -> None: ...

    @abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int, fb: ForwardBatch,
                kv_pool: KVPool, scale: float, kv_stored: bool = False) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq * D]. Stores k/v at ``fb.out_cache_loc`` first, unless
        ``kv_stored`` (the model's fused RoPE + store kernel put them there)."""
