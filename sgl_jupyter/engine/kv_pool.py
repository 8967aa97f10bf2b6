"""KV memory: a token-slot pool (one K and one V buffer per layer, a slot per token) and the
request-to-token table that maps each running request's positions to its slots."""
from __future__ import annotations

import torch

from .errors import KVCacheOOMError


class KVPool:
    """Per-layer K/V buffers ``[size + 1, kv_heads, head_dim]``; slot 0 is a scratch slot that
    padded positions may write to, so real slots are 1..size."""

    def __init__(self, size: int, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device):
        self.size = size
        self.num_layers, self.kv_heads, self.head_dim = num_layers, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        try:
            self.k_buffers = [torch.zeros(size + 1, kv_heads, head_dim, dtype=dtype, device=device)
                              for _ in range(num_layers)]
            self.v_buffers = [torch.zeros(size + 1, kv_heads, head_dim, dtype=dtype, device=device)
                              for _ in range(num_layers)]
        except (RuntimeError, MemoryError) as e:  # torch.OutOfMemoryError is a RuntimeError
            raise KVCacheOOMError(
                f"cannot allocate a KV cache of {size} tokens ({self.bytes_per_token() * size / 2**30:.2f} GiB): "
                "lower --max-total-tokens or --mem-fraction-static, or use a smaller model") from e
        self._free = torch.arange(1, size + 1, dtype=torch.int64)
        self._num_free = size

    def bytes_per_token(self) -> int:
        return kv_bytes_per_token(self.num_layers, self.kv_heads, self.head_dim, self.dtype)

    @property
    def free_size(self) -> int:
        return self._num_free

    def alloc(self, n: int) -> torch.Tensor | None:
        """``n`` free slots (int64, CPU), or None when fewer are free."""
        if n > self._num_free:
            return None
        out = self._free[self._num_free - n:self._num_free].clone()
        self._num_free -= n
        return out

    def free(self, slots: torch.Tensor) -> None:
        n = slots.numel()
        if n == 0:
            return
        assert self._num_free + n <= self.size, "KV slot double free"
        self._free[self._num_free:self._num_free + n] = slots.to(torch.int64).cpu()
        self._num_free += n

    def reset(self) -> None:
        self._free = torch.arange(1, self.size + 1, dtype=torch.int64)
        self._num_free = self.size

    def set_kv(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k_buffers[layer_id][loc] = k.to(self.dtype)
        self.v_buffers[layer_id][loc] = v.to(self.dtype)


def kv_bytes_per_token(num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    return 2 * num_layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


class ReqToTokenPool:
    """``table[row, pos]`` is the KV slot of token ``pos`` of the request that holds ``row``."""

    def __init__(self, max_reqs: int, max_context: int, device: torch.device):
        self.max_reqs, self.max_context = max_reqs, max_context
        self.table = torch.zeros(max_reqs, max_context, dtype=torch.int32, device=device)
        self._free_rows = list(range(max_reqs - 1, -1, -1))

    @property
    def free_rows(self) -> int:
        return len(self._free_rows)

    def alloc(self) -> int | None:
        return self._free_rows.pop() if self._free_rows else None

    def free(self, row: int) -> None:
        assert row not in self._free_rows, "request row double free"
        self._free_rows.append(row)

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        self.table[row, start:start + slots.numel()] = slots.to(device=self.table.device, dtype=torch.int32)

    def read(self, row: int, end: int, start: int = 0) -> torch.Tensor:
        return self.table[row, start:end].to(torch.int64)
