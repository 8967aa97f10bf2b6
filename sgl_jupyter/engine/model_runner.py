"""ModelRunner: runs one ForwardBatch through the model and returns float32 logits. The place where
device-specific execution (attention backend metadata, CUDA graphs) lives, so the scheduler does not care."""
from __future__ import annotations

import torch

from .attention.base import AttentionBackend
from .forward_batch import ForwardBatch
from .kv_pool import KVPool, ReqToTokenPool
from .loader import LoadedModel


class ModelRunner:
    def __init__(self, loaded: LoadedModel, kv_pool: KVPool, req_to_token: ReqToTokenPool,
                 attn_backend: AttentionBackend):
        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        self.kv_pool = kv_pool
        self.req_to_token = req_to_token
        self.attn_backend = attn_backend
        self.forward_calls = 0

    @torch.inference_mode()
    def forward(self, fb: ForwardBatch) -> torch.Tensor:
        """Logits [len(fb.logits_indices), vocab] in float32 (empty when no row is asked for)."""
        self.forward_calls += 1
        fb.extra["ctx"] = self
        self.attn_backend.init_forward_metadata(fb)
        hidden = self.model(fb)
        if hidden.shape[0] == 0:
            return hidden.new_zeros(0, self.model.config.vocab_size, dtype=torch.float32)
        return self.model.compute_logits(hidden).float()
