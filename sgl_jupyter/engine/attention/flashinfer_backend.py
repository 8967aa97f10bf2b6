"""FlashInfer attention backend (optional; ``pip install flashinfer-python``).

The token-slot pool is a paged KV cache with page size 1: each request's pages are its row of the
request-to-token table, flattened into ``kv_indices`` by a Triton kernel. ``plan`` runs once per
forward with host-side indptrs built from the ForwardBatch's ``*_cpu`` lists (no device sync);
the layers then only ``run``. Decode uses tensor cores when the GQA group is 4 or more."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sgl_jupyter.kernels.kv_indices import build_kv_indices
from sgl_jupyter.kernels.store_kv import store_kv

from ..forward_batch import ForwardBatch
from ..kv_pool import KVPool
from .base import AttentionBackend

try:
    import flashinfer
except Exception:  # noqa: BLE001 - absent, or broken against this torch/CUDA
    flashinfer = None

WORKSPACE_BYTES = 256 * 2**20


def is_available() -> bool:
    return flashinfer is not None and torch.cuda.is_available()


@dataclass
class FlashInferMeta:
    wrapper: Any  # the planned decode or prefill wrapper


def _indptr_cpu(lens: list[int]) -> torch.Tensor:
    out = torch.zeros(len(lens) + 1, dtype=torch.int32)
    if lens:
        out[1:] = torch.tensor(lens, dtype=torch.int32).cumsum(0)
    return out


class FlashInferAttnBackend(AttentionBackend):
    def __init__(self, num_q_heads: int, num_kv_heads: int, head_dim: int, device: torch.device,
                 kv_pool: KVPool | None = None, **kwargs):
        super().__init__(num_q_heads, num_kv_heads, head_dim, device)
        if not is_available():
            raise RuntimeError("FlashInfer is not importable here: pip install flashinfer-python, "
                               "or choose --attention-backend triton")
        self.dtype = kv_pool.dtype if kv_pool is not None else torch.bfloat16
        if kv_pool is not None and kv_pool.is_fp8:  # choose_backend_name never picks it; a direct build is a bug
            raise ValueError("the FlashInfer backend has no fp8 KV cache path here: use --attention-backend triton")
        self.workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self.decode_wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace, "NHD", use_tensor_cores=num_q_heads // num_kv_heads >= 4)
        self.prefill_wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self.workspace, "NHD")
        self._scale = head_dim ** -0.5  # plan needs it before the layers pass theirs; checked in forward

    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        dev = fb.req_to_token.device
        B = fb.batch_size
        kv_indptr_cpu = _indptr_cpu(fb.seq_lens_cpu)
        kv_indptr = kv_indptr_cpu.to(dev, non_blocking=True)
        kv_indices = torch.empty(max(1, int(kv_indptr_cpu[-1])), dtype=torch.int32, device=dev)
        build_kv_indices(fb.req_to_token, fb.req_pool_indices, fb.seq_lens, kv_indptr, kv_indices)
        last_page_len = torch.ones(B, dtype=torch.int32)
        common = dict(num_kv_heads=self.num_kv_heads, page_size=1, q_data_type=self.dtype,
                      kv_data_type=self.dtype, sm_scale=self._scale)
        if fb.is_decode:
            self.decode_wrapper.plan(kv_indptr_cpu, kv_indices, last_page_len, num_qo_heads=self.num_q_heads,
                                     head_dim=self.head_dim, **common)
            fb.attn_metadata = FlashInferMeta(self.decode_wrapper)
        else:
            self.prefill_wrapper.plan(_indptr_cpu(fb.extend_lens_cpu), kv_indptr_cpu, kv_indices, last_page_len,
                                      num_qo_heads=self.num_q_heads, head_dim_qk=self.head_dim, causal=True,
                                      **common)
            fb.attn_metadata = FlashInferMeta(self.prefill_wrapper)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int, fb: ForwardBatch,
                kv_pool: KVPool, scale: float, kv_stored: bool = False) -> torch.Tensor:
        if abs(scale - self._scale) > 1e-9 * self._scale:
            raise ValueError(f"FlashInfer was planned with sm_scale {self._scale}, the layer asks {scale}")
        k_buf, v_buf = kv_pool.k_buffers[layer_id], kv_pool.v_buffers[layer_id]
        if not kv_stored:
            store_kv(k_buf, v_buf, fb.out_cache_loc, k, v)
        cache = (k_buf.unsqueeze(1), v_buf.unsqueeze(1))  # [slots, page_size=1, Hkv, D]
        out = fb.attn_metadata.wrapper.run(q.contiguous().to(self.dtype), cache)
        return out.to(q.dtype).reshape(out.shape[0], -1)
