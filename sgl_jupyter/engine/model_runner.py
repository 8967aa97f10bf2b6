"""ModelRunner: runs one ForwardBatch through the model and returns float32 logits. The place where
device-specific execution (attention backend metadata, CUDA graphs) lives, so the scheduler does not care."""
from __future__ import annotations

import logging
from typing import Optional

import torch

from .attention.base import AttentionBackend
from .cuda_graph_runner import LaunchSampling, MultiStepLaunch
from .forward_batch import ForwardBatch
from .kv_pool import KVPool, ReqToTokenPool
from .loader import LoadedModel

logger = logging.getLogger(__name__)


class ModelRunner:
    """``attn_backend`` serves extend (prefill) batches; ``decode_backend`` serves decode batches and
    defaults to the same one. With CUDA graphs the decode backend must be graph-safe (Triton), so a
    FlashInfer engine prefills with FlashInfer and decodes with the Triton split-KV kernel."""

    def __init__(self, loaded: LoadedModel, kv_pool: KVPool, req_to_token: ReqToTokenPool,
                 attn_backend: AttentionBackend, decode_backend: Optional[AttentionBackend] = None):
        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        self.kv_pool = kv_pool
        self.req_to_token = req_to_token
        self.attn_backend = attn_backend
        self.decode_backend = decode_backend or attn_backend
        self.forward_calls = 0
        self.graphs = None  # CudaGraphRunner once captured
        self.continuous_decode_steps = 1  # greedy decode steps per launch (multi-step graphs captured)
        self.tp_coordinator = None  # tensor parallel, rank 0: distributed.coordinator.TPCoordinator
        from .cpu_decode import build_cpu_decoder

        self.cpu_decode = build_cpu_decoder(loaded, kv_pool, req_to_token)  # packed GGUF on CPU: one C call/step

    def capture_cuda_graphs(self, max_bs: int, progress: bool = False) -> None:
        from .cuda_graph_runner import CudaGraphRunner

        self.graphs = CudaGraphRunner(self._forward_eager, self.decode_backend, self.req_to_token.table, max_bs,
                                      self.device, progress=progress)

    def capture_multi_step(self, steps: int, max_bs: int, progress: bool = False) -> None:
        self.graphs.capture_multi_step(steps, max_bs, progress)
        self.continuous_decode_steps = steps

    def multi_step_batch_limit(self) -> int:
        """Largest batch that ``launch_decode_multi_step`` takes (0: not captured)."""
        return getattr(self.graphs, "ms_max_bs", 0) if self.graphs is not None else 0

    @property
    def multi_step_sampling(self) -> bool:
        """Multi-step launches can sample on the device (not only take the argmax)."""
        return self.graphs is not None and bool(getattr(self.graphs, "ms_sampled_graphs", None))

    @torch.inference_mode()
    def launch_decode_multi_step(self, input_ids: list[int], positions: list[int], locs: torch.Tensor,
                                 rows: list[int], carry: Optional[list[int]] = None,
                                 sampling: Optional[LaunchSampling] = None) -> MultiStepLaunch:
        self.forward_calls += 1
        return self.graphs.launch_multi_step(input_ids, positions, locs, rows, carry, sampling)

    @torch.inference_mode()
    def forward(self, fb: ForwardBatch) -> torch.Tensor:
        """Logits [len(fb.logits_indices), vocab] in float32 (empty when no row is asked for)."""
        self.forward_calls += 1
        if self.tp_coordinator is not None:  # the workers get the batch first, then every rank runs it
            return self.tp_coordinator.forward(fb, self._forward_local)
        return self._forward_local(fb)

    def _forward_local(self, fb: ForwardBatch) -> torch.Tensor:
        if self.graphs is not None and self.graphs.can_run(fb):
            return self.graphs.replay(fb)
        if self.cpu_decode is not None and fb.is_decode:
            return self.cpu_decode.forward(fb)
        return self._forward_eager(fb)

    def _forward_eager(self, fb: ForwardBatch) -> torch.Tensor:
        backend = self.decode_backend if fb.is_decode else self.attn_backend
        fb.extra["attn"] = backend
        fb.extra["kv_pool"] = self.kv_pool
        backend.init_forward_metadata(fb)
        hidden = self.model(fb)
        if hidden.shape[0] == 0:
            return hidden.new_zeros(0, self.model.config.vocab_size, dtype=torch.float32)
        return self.model.compute_logits(hidden).float()
