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
        # one host->device copy for all the index lists (a copy per list costs a launch each on CUDA)
        parts = [input_ids, positions, req_pool_indices, seq_lens, prefix_lens, extend_lens, logits_indices]
        host = torch.cat([torch.tensor([x for part in parts for x in part], dtype=torch.int64),
                          out_cache_loc.to(torch.int64).cpu()])
        dev = host.to(device, non_blocking=True) if torch.device(device).type != "cpu" else host
        sizes = [len(part) for part in parts] + [out_cache_loc.numel()]
        (ids_t, pos_t, rows_t, seq_t, pre_t, ext_t, logit_t, loc_t) = dev.split(sizes)
        return cls(mode=mode, input_ids=ids_t, positions=pos_t, out_cache_loc=loc_t, req_pool_indices=rows_t,
                   seq_lens=seq_t, prefix_lens=pre_t, extend_lens=ext_t, seq_lens_cpu=seq_lens,
                   prefix_lens_cpu=list(prefix_lens), extend_lens_cpu=list(extend_lens), req_to_token=req_to_token,
                   logits_indices=logit_t, extra=extra or {})
