"""Token embedding and LM head split over the vocabulary (rank r holds rows ``r*V/N ..``, the last
shard padded when N does not divide V). The embedding sums the ranks' lookups (each rank fills only
the ids it owns); the LM head gathers each rank's slice of the logits into the full vocabulary."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sgl_jupyter.kernels import gemv

from ..distributed.parallel_state import TPGroup
from .linear import WeightSource, read_shard, source_shape


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, tp: Optional[TPGroup] = None):
        super().__init__()
        self.tp = tp or TPGroup()
        self.vocab_size = vocab_size
        per_rank = -(-vocab_size // self.tp.size)
        self.start = min(self.tp.rank * per_rank, vocab_size)
        self.end = min(self.start + per_rank, vocab_size)
        self.weight = nn.Parameter(torch.empty(per_rank, hidden_size), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(input_ids, self.weight)
        foreign = (input_ids < self.start) | (input_ids >= self.end)
        local = torch.where(foreign, torch.zeros_like(input_ids), input_ids - self.start)
        out = F.embedding(local, self.weight).masked_fill_(foreign.unsqueeze(-1), 0)
        return self.tp.all_reduce(out)

    def load_weight(self, param: torch.Tensor, src: WeightSource, shard_id: Optional[int] = None) -> None:
        rows = self.end - self.start
        if source_shape(src)[0] != self.vocab_size:
            raise ValueError(f"checkpoint vocabulary {source_shape(src)[0]} != config vocab_size {self.vocab_size}")
        param.data[:rows].copy_(read_shard(src, 0, self.start, rows))
        param.data[rows:].zero_()


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection; ``logits`` also serves a tied head (pass the embedding's weight)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return vocab_parallel_logits(hidden, self.weight, self.tp, self.vocab_size)


def vocab_parallel_logits(hidden: torch.Tensor, weight: torch.Tensor, tp: TPGroup, vocab_size: int) -> torch.Tensor:
    """Full-vocabulary logits [R, vocab_size] on every rank."""
    logits = gemv.linear(hidden, weight)
    if tp.size == 1:
        return logits
    return tp.all_gather(logits)[..., :vocab_size]
