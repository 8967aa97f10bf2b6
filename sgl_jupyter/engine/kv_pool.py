"""KV memory: a token-slot pool (one K and one V buffer per layer, a slot per token) and the
request-to-token table that maps each running request's positions to its slots.

``kv_cache_dtype="fp8_e4m3"`` stores K/V as float8_e4m3fn with a per-layer scale (stored = x / scale,
read = stored * scale; 1.0 without a calibrated checkpoint, as SGLang and vLLM do): one byte per element,
so the same memory holds twice the tokens of a bf16 cache."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from sgl_jupyter.kernels.store_kv import store_kv_ref

from .config import KV_CACHE_DTYPES
from .errors import KVCacheOOMError

FP8_KV_DTYPE = torch.float8_e4m3fn


def kv_cache_torch_dtype(kv_cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """The pool's element type for ``--kv-cache-dtype``."""
    if kv_cache_dtype == "auto":
        return model_dtype
    if kv_cache_dtype == "fp8_e4m3":
        return FP8_KV_DTYPE
    raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {kv_cache_dtype!r}")


class KVPool:
    """Per-layer K/V buffers ``[size + 1, kv_heads, head_dim]``; slot 0 is a scratch slot that
    padded positions may write to, so real slots are 1..size."""

    def __init__(self, size: int, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, k_scales: Optional[Sequence[float]] = None,
                 v_scales: Optional[Sequence[float]] = None):
        self.size = size
        self.num_layers, self.kv_heads, self.head_dim = num_layers, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.is_fp8 = dtype == FP8_KV_DTYPE
        # per-layer dequantization scales (python floats: kernel arguments, nothing to sync); 1.0 unless fp8.
        # Fixed once decode CUDA graphs are captured (the graphs hold them as launch arguments).
        self.k_scales = [float(s) for s in k_scales] if k_scales is not None else [1.0] * num_layers
        self.v_scales = [float(s) for s in v_scales] if v_scales is not None else [1.0] * num_layers
        if len(self.k_scales) != num_layers or len(self.v_scales) != num_layers:
            raise ValueError(f"need one k and one v scale per layer ({num_layers})")
        if not self.is_fp8 and any(s != 1.0 for s in self.k_scales + self.v_scales):
            raise ValueError("KV scales other than 1.0 need an fp8 KV cache")
        if any(not s > 0 for s in self.k_scales + self.v_scales):
            raise ValueError("KV scales must be > 0")
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
        store_kv_ref(self.k_buffers[layer_id], self.v_buffers[layer_id], loc, k, v, self.k_scales[layer_id],
                     self.v_scales[layer_id])  # fp8: x / scale saturated to +-448 (a plain cast gives NaN)

    def read_kv(self, layer_id: int, slots: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V rows of ``slots`` in ``dtype``, dequantized (the torch paths' read)."""
        k, v = self.k_buffers[layer_id][slots], self.v_buffers[layer_id][slots]
        ks, vs = self.k_scales[layer_id], self.v_scales[layer_id]  # 1.0 unless fp8: e4m3 is exact in any float
        if ks != 1.0:  # scale in float32, round once to dtype
            k = k.float() * ks
        if vs != 1.0:
            v = v.float() * vs
        return k.to(dtype), v.to(dtype)


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
