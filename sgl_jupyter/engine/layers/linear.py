"""Linear layers sharded over a tensor-parallel group (Megatron style), each loading its own shard.

- ``ColumnParallelLinear``: output features split over ranks; the output stays split (no collective).
- ``MergedColumnParallelLinear``: several column-parallel projections in one matmul (``gate_up_proj``).
- ``QKVParallelLinear``: q/k/v heads split over ranks; KV heads replicated when fewer than ranks.
- ``RowParallelLinear``: input features split; partial outputs summed by one all-reduce.

Weights arrive as full HF tensors or as safetensors slices (``safe_open(...).get_slice(name)``), so
a rank reads only the bytes of its shard. With one rank every layer is ``F.linear`` on the full weight (one-row CUDA inputs: the Triton GEMV)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from sgl_jupyter.kernels import gemv

from ..distributed.parallel_state import TPGroup

WeightSource = Union[torch.Tensor, "object"]  # a tensor, or a safetensors slice (has get_shape and [...])


def source_shape(src: WeightSource) -> list[int]:
    return list(src.shape) if isinstance(src, torch.Tensor) else list(src.get_shape())


def read_shard(src: WeightSource, dim: int, start: int, length: int) -> torch.Tensor:
    """Rows ``start:start+length`` of ``src`` along ``dim`` (only those bytes are read from a slice)."""
    if isinstance(src, torch.Tensor):
        return src.narrow(dim, start, length)
    return src[(slice(None),) * dim + (slice(start, start + length),)]


def read_all(src: WeightSource) -> torch.Tensor:
    return src if isinstance(src, torch.Tensor) else src[:]


def load_replicated(param: torch.Tensor, src: WeightSource) -> None:
    full = read_all(src)
    if tuple(full.shape) != tuple(param.shape):
        raise ValueError(f"checkpoint tensor of shape {tuple(full.shape)} does not fit parameter {tuple(param.shape)}")
    param.data.copy_(full)


def load_fp8_scale(layer: nn.Module, param: torch.Tensor, src: WeightSource, part: int,
                   rows: tuple[int, int, int]) -> bool:
    """An FP8 checkpoint's ``weight_scale`` (per tensor, or per output channel) into ``layer``'s per-row
    scale at ``rows`` = (offset in the local weight, length, first row in the HF tensor), or the fused
    ``part``'s ``input_scale`` (kept, not used: activations are scaled per token). False: neither."""
    if param is not getattr(layer, "weight_scale", None) and param is not getattr(layer, "input_scale", None):
        return False
    full = (read_all(src) if source_shape(src) else src[...]).float().reshape(-1)
    if param is getattr(layer, "input_scale", None):
        param.data[part] = full.max()
        return True
    offset, length, src_start = rows
    param.data.narrow(0, offset, length).copy_(full.expand(length) if full.numel() == 1
                                               else full.narrow(0, src_start, length))
    return True


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(f"checkpoint shard of shape {tuple(src.shape)} does not fit {tuple(dst.shape)}")
    dst.copy_(src)


def project(layer: nn.Module, x: torch.Tensor, bias: Optional[torch.Tensor],
            prologue: Optional[gemv.Prologue] = None) -> torch.Tensor:
    """``prologue(x) @ W.T (+ bias)`` with ``layer``'s weight. A prologue (the norm or SiLU*mul before this
    projection) rides the one-row GEMV's load of x where that kernel multiplies (dense or fp8 weights);
    elsewhere it runs as its own kernel first."""
    qm = layer.quant_method
    if prologue is not None:
        if (qm is None or qm.name == "fp8") and gemv.fusable(x, layer.weight) and prologue.fits(x):
            return gemv.gemv_triton(x, layer.weight, bias, scale=None if qm is None else layer.weight_scale,
                                    prologue=prologue)
        x = prologue.unfused(x)
    if qm is not None:
        return qm.apply(layer, x, bias)
    return gemv.linear(x, layer.weight, bias)


class ColumnParallelLinear(nn.Module):
    """``y[:, shard] = x @ W[shard].T``: this rank's slice of the output features."""

    def __init__(self, in_features: int, out_sizes: Sequence[int], bias: bool, tp: Optional[TPGroup] = None):
        super().__init__()
        self.tp = tp or TPGroup()
        for n in out_sizes:
            if n % self.tp.size:
                raise ValueError(f"output size {n} is not divisible by tp_size={self.tp.size}")
        self.in_features = in_features
        # (offset in the local weight, length, offset of this rank's rows in the full HF tensor) per part
        self.parts = self._parts(out_sizes)
        local = sum(length for _, length, _ in self.parts)
        self.weight = nn.Parameter(torch.empty(local, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(local), requires_grad=False) if bias else None
        self.quant_method = None  # a quantization.LinearQuantMethod, set by the loader

    def _parts(self, out_sizes: Sequence[int]) -> list[tuple[int, int, int]]:
        parts, offset = [], 0
        for n in out_sizes:
            length = n // self.tp.size
            parts.append((offset, length, self.tp.rank * length))
            offset += length
        return parts

    def forward(self, x: torch.Tensor, prologue: Optional[gemv.Prologue] = None) -> torch.Tensor:
        return project(self, x, self.bias, prologue)

    def load_weight(self, param: torch.Tensor, src: WeightSource, shard_id: Optional[int] = None) -> None:
        """``shard_id``: which fused part ``src`` is (HF ``q_proj`` -> 0, ...); None: the whole fused
        tensor in the single-GPU layout (dummy weights)."""
        if shard_id is None and len(self.parts) > 1:
            full_sizes = self._full_sizes()
            start = 0
            for i, n in enumerate(full_sizes):
                self.load_weight(param, read_shard(src, 0, start, n), i)
                start += n
            return
        offset, length, src_start = self.parts[shard_id or 0]
        if load_fp8_scale(self, param, src, shard_id or 0, self.parts[shard_id or 0]):
            return
        _copy(param.data.narrow(0, offset, length), read_shard(src, 0, src_start, length))

    def _full_sizes(self) -> list[int]:
        return [length * self.tp.size for _, length, _ in self.parts]


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several projections of the same input side by side (``[gate | up]``), each split over ranks."""


class QKVParallelLinear(ColumnParallelLinear):
    """Fused q/k/v projection; rank r holds query heads ``r*H/N ..`` and the KV heads they attend
    with (``N > KV heads``: each KV head is replicated on ``N / KV heads`` ranks)."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool,
                 tp: Optional[TPGroup] = None):
        tp = tp or TPGroup()
        self.total_kv_heads = num_kv_heads
        self.kv_heads = max(1, num_kv_heads // tp.size)
        self.head_dim = head_dim
        super().__init__(hidden_size, [num_heads * head_dim, self.kv_heads * tp.size * head_dim,
                                       self.kv_heads * tp.size * head_dim], bias, tp)

    def _parts(self, out_sizes: Sequence[int]) -> list[tuple[int, int, int]]:
        q_len = out_sizes[0] // self.tp.size
        kv_len = self.kv_heads * self.head_dim
        if self.total_kv_heads >= self.tp.size:
            kv_start = self.tp.rank * kv_len
        else:  # replicated: ranks r*KV/N .. share KV head r // (N / KV)
            kv_start = self.tp.rank // (self.tp.size // self.total_kv_heads) * self.head_dim
        return [(0, q_len, self.tp.rank * q_len), (q_len, kv_len, kv_start), (q_len + kv_len, kv_len, kv_start)]

    def _full_sizes(self) -> list[int]:
        q, kv = self.parts[0][1] * self.tp.size, self.total_kv_heads * self.head_dim
        return [q, kv, kv]


class RowParallelLinear(nn.Module):
    """``y = sum_r x[:, shard_r] @ W[:, shard_r].T`` (+ bias once): input split, output all-reduced."""

    def __init__(self, in_features: int, out_features: int, bias: bool, tp: Optional[TPGroup] = None):
        super().__init__()
        self.tp = tp or TPGroup()
        if in_features % self.tp.size:
            raise ValueError(f"input size {in_features} is not divisible by tp_size={self.tp.size}")
        self.in_features = in_features // self.tp.size
        self.weight = nn.Parameter(torch.empty(out_features, self.in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.quant_method = None  # a quantization.LinearQuantMethod, set by the loader

    def forward(self, x: torch.Tensor, prologue: Optional[gemv.Prologue] = None) -> torch.Tensor:
        if self.tp.size == 1:
            return project(self, x, self.bias, prologue)
        y = self.tp.all_reduce(project(self, x, None, prologue))
        return y if self.bias is None else y + self.bias

    def load_weight(self, param: torch.Tensor, src: WeightSource, shard_id: Optional[int] = None) -> None:
        if param is self.bias:
            load_replicated(param, src)
        elif not load_fp8_scale(self, param, src, 0, (0, param.shape[0], 0)):
            _copy(param.data, read_shard(src, 1, self.tp.rank * self.in_features, self.in_features))
