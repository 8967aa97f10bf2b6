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
    """``table[row, pos]`` is the KV slot of token ``pos`` of the request that holds ``row``.

    On a GPU the kernels read ``table`` on the device, and the scheduler keeps ``host``, a copy in CPU
    memory that every write goes to as well: reading the device table back (to free a finished request's
    slots, say) would wait for the GPU, which defeats launching the next decode before committing the last.
    Writes are ordered with the kernels on the current stream and never wait for them."""

    def __init__(self, max_reqs: int, max_context: int, device: torch.device):
        self.max_reqs, self.max_context = max_reqs, max_context
        self.table = torch.zeros(max_reqs, max_context, dtype=torch.int32, device=device)
        self.host = self.table if self.table.device.type == "cpu" else torch.zeros_like(self.table, device="cpu")
        self._free_rows = list(range(max_reqs - 1, -1, -1))

    @property
    def free_rows(self) -> int:
        return len(self._free_rows)

    def alloc(self) -> int | None:
        return self._free_rows.pop() if self._free_rows else None

    def free(self, row: int) -> None:
        assert row not in self._free_rows, "request row double free"
        self._free_rows.append(row)

    def _to_device(self, values: torch.Tensor) -> torch.Tensor:
        # from pageable memory, non_blocking stages the bytes at once and does not wait for the stream
        return values.to(device=self.table.device, dtype=torch.int32, non_blocking=True)

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        slots = slots.to("cpu", torch.int32)
        self.host[row, start:start + slots.numel()] = slots
        if self.host is not self.table:
            self.table[row, start:start + slots.numel()] = self._to_device(slots)

    def mirror_cells(self, rows: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor) -> None:
        """Record in the host copy ``table[rows[i], positions[i]] = slots[i]`` (CPU int64 tensors of one
        shape), cells a decode step writes on the device itself from the index tensors it already has."""
        self.host[rows.flatten(), positions.flatten()] = slots.flatten().to(torch.int32)

    def clear(self, row: int, start: int, end: int) -> None:
        self.host[row, start:end] = 0
        if self.host is not self.table:
            self.table[row, start:end] = 0

    def read(self, row: int, end: int, start: int = 0) -> torch.Tensor:
        """Slots of positions ``start..end`` of ``row`` (int64, CPU; never waits for the GPU)."""
        return self.host[row, start:end].to(torch.int64)
