"""Triton attention backend: KV store, split-KV paged decode and prefix-aware extend kernels from
``sgl_jupyter.kernels``.

Decode metadata depends only on the batch size (the split count and slices of scratch buffers
sized for ``max_bs`` at start-up); lengths are read on the device. So a decode forward makes no
host sync and no allocation, and can be captured in a CUDA graph as long as the ForwardBatch
tensors it reads are the graph's static buffers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from sgl_jupyter.kernels._triton import require_triton
from sgl_jupyter.kernels.decode_attention import choose_num_kv_splits, decode_attention_triton
from sgl_jupyter.kernels.extend_attention import extend_attention_triton
from sgl_jupyter.kernels.store_kv import store_kv_triton

from ..forward_batch import ForwardBatch
from ..kv_pool import KVPool
from .base import AttentionBackend

require_triton()  # importing this module is how attention/__init__ probes availability
FP8_KV_MIN_CAPABILITY = (8, 9)


@dataclass
class DecodeMeta:
    num_kv_splits: int
    mid_o: torch.Tensor  # [B, Hq, splits, D] float32 scratch
    mid_lse: torch.Tensor  # [B, Hq, splits] float32 scratch


@dataclass
class ExtendMeta:
    extend_start_loc: torch.Tensor  # [B] first packed row of each request
    max_extend_len: int  # host int: sizes the grid without a sync


class TritonAttnBackend(AttentionBackend):
    def __init__(self, num_q_heads: int, num_kv_heads: int, head_dim: int, device: torch.device,
                 max_bs: int = 256, max_kv_splits: int = 32, kv_pool: Optional[KVPool] = None, **kwargs):
        super().__init__(num_q_heads, num_kv_heads, head_dim, device)
        if num_q_heads % num_kv_heads:
            raise ValueError(f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        device = torch.device(device)
        if kv_pool is not None and kv_pool.is_fp8 and device.type == "cuda":
            cap = torch.cuda.get_device_capability(device)
            if cap < FP8_KV_MIN_CAPABILITY:  # Triton has no e4m3 casts before Ada
                raise ValueError(f"{torch.cuda.get_device_name(device)} (compute capability {cap[0]}.{cap[1]}) has "
                                 "no e4m3 conversions: --kv-cache-dtype fp8_e4m3 needs 8.9+ (Ada, Hopper, "
                                 "Blackwell); use --kv-cache-dtype auto")
        self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
        self.max_kv_splits = max_kv_splits
        self.max_bs = 0
        self._reserve(max(1, int(max_bs or 1)))

    def num_kv_splits(self, batch_size: int) -> int:
        return choose_num_kv_splits(batch_size, self.num_kv_heads, self.num_sms, self.max_kv_splits)

    def _reserve(self, max_bs: int) -> None:
        """Scratch for every decode batch size up to ``max_bs`` (one buffer; views per size)."""
        need = max(bs * self.num_kv_splits(bs) for bs in range(1, max_bs + 1))
        self._mid_o = torch.empty(need * self.num_q_heads * self.head_dim, dtype=torch.float32, device=self.device)
        self._mid_lse = torch.empty(need * self.num_q_heads, dtype=torch.float32, device=self.device)
        self.max_bs = max_bs

    def init_cuda_graph_state(self, max_bs: int) -> None:
        """Call before capturing decode graphs up to ``max_bs`` so no capture allocates scratch."""
        if max_bs > self.max_bs:
            self._reserve(max_bs)

    def decode_meta(self, batch_size: int) -> DecodeMeta:
        if batch_size > self.max_bs:  # eager batches beyond the reserved size: grow once
            self._reserve(batch_size)
        s = self.num_kv_splits(batch_size)
        hq, d = self.num_q_heads, self.head_dim
        mid_o = self._mid_o[:batch_size * hq * s * d].view(batch_size, hq, s, d)
        mid_lse = self._mid_lse[:batch_size * hq * s].view(batch_size, hq, s)
        return DecodeMeta(s, mid_o, mid_lse)

    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        if fb.is_decode:
            fb.attn_metadata = self.decode_meta(fb.batch_size)
        else:
            start = torch.cumsum(fb.extend_lens, 0) - fb.extend_lens
            fb.attn_metadata = ExtendMeta(start, max(fb.extend_lens_cpu) if fb.extend_lens_cpu else 0)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int, fb: ForwardBatch,
                kv_pool: KVPool, scale: float, kv_stored: bool = False) -> torch.Tensor:
        k_buf, v_buf = kv_pool.k_buffers[layer_id], kv_pool.v_buffers[layer_id]
        ks, vs = kv_pool.k_scales[layer_id], kv_pool.v_scales[layer_id]  # 1.0 unless an fp8 pool
        if not kv_stored:
            store_kv_triton(k_buf, v_buf, fb.out_cache_loc, k, v, ks, vs)
        meta = fb.attn_metadata
        if fb.is_decode:
            out = decode_attention_triton(q, k_buf, v_buf, fb.req_to_token, fb.req_pool_indices, fb.seq_lens, scale,
                                          num_kv_splits=meta.num_kv_splits, mid_o=meta.mid_o, mid_lse=meta.mid_lse,
                                          k_scale=ks, v_scale=vs)
        else:
            out = extend_attention_triton(q, k_buf, v_buf, fb.req_to_token, fb.req_pool_indices, fb.prefix_lens,
                                          fb.extend_lens, scale, max_extend_len=meta.max_extend_len,
                                          extend_start_loc=meta.extend_start_loc, k_scale=ks, v_scale=vs)
        return out.view(out.shape[0], -1)
