"""ForwardBatch: everything one model forward needs, built by the scheduler."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional

import torch


class ForwardMode(enum.Enum):
    EXTEND = "extend"  # prefill (possibly a chunk, possibly on top of a cached prefix)
    DECODE = "decode"  # one new token per request


@dataclass
class ForwardBatch:
    mode: ForwardMode
    input_ids: torch.Tensor  # [T] int64, packed over requests
    positions: torch.Tensor  # [T] int64
    out_cache_loc: torch.Tensor  # [T] int64: KV slot of each new token
    req_pool_indices: torch.Tensor  # [B] int64
    seq_lens: torch.Tensor  # [B] int64: prefix + new tokens
    prefix_lens: torch.Tensor  # [B] int64
    extend_lens: torch.Tensor  # [B] int64 (ones in decode)
    seq_lens_cpu: list[int]
    prefix_lens_cpu: list[int]
    extend_lens_cpu: list[int]
    req_to_token: torch.Tensor  # [max_reqs, max_context] int32
    logits_indices: torch.Tensor  # [R] rows of the packed hidden states whose logits are needed
    attn_metadata: Any = None  # filled by the attention backend's init_forward_metadata
    extra: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def is_decode(self) -> bool:
        return self.mode is ForwardMode.DECODE

    @property
    def extend_start_loc_cpu(self) -> list[int]:
        out, acc = [], 0
        for n in self.extend_lens_cpu:
            out.append(acc)
            acc += n
        return out

    @classmethod
    def build(cls, mode: ForwardMode, input_ids: list[int], positions: list[int], out_cache_loc: torch.Tensor,
              req_pool_indices: list[int], prefix_lens: list[int], extend_lens: list[int],
              req_to_token: torch.Tensor, logits_indices: list[int], device: torch.device,
              extra: Optional[dict] = None) -> "ForwardBatch":
        seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]

        def t(x: list[int]) -> torch.Tensor:
            return torch.tensor(x, dtype=torch.int64).to(device, non_blocking=True)

        return cls(mode=mode, input_ids=t(input_ids), positions=t(positions),
                   out_cache_loc=out_cache_loc.to(device, non_blocking=True),
                   req_pool_indices=t(req_pool_indices), seq_lens=t(seq_lens), prefix_lens=t(prefix_lens),
                   extend_lens=t(extend_lens), seq_lens_cpu=seq_lens, prefix_lens_cpu=list(prefix_lens),
                   extend_lens_cpu=list(extend_lens), req_to_token=req_to_token,
                   logits_indices=t(logits_indices), extra=extra or {})
