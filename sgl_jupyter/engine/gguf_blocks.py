"""Packed GGUF blocks of a Llama-family model, by our layer names, in HF row order.

The weights come straight from the GGUF file (memory-mapped by the ``gguf`` reader), never re-quantized: each
row keeps the file's blocks (fp16 scale/min + 4- or 8-bit values), so the packed weight is exactly the tensor
that the fp32 conversion dequantized. llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` (rotary
pairs interleaved); transformers un-permutes them when it dequantizes, so the packed rows are un-permuted the
same way here (whole rows move; the blocks inside a row are untouched)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from sgl_jupyter.kernels.gguf_cpu import BLOCK_BYTES, TYPES

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)$")
_PARTS = {"qkv_proj": ("attn_q", "attn_k", "attn_v"), "o_proj": ("attn_output",),
          "gate_up_proj": ("ffn_gate", "ffn_up"), "down_proj": ("ffn_down",)}


@dataclass
class PackedWeight:
    """``rows`` output features of ``cols`` inputs, as ``rows`` x ``cols // 32`` GGUF blocks of one type."""

    type_id: int
    type_name: str
    rows: int
    cols: int
    data: torch.Tensor  # uint8 [rows, cols // 32 * block bytes]


def find_gguf_for(model_path: Path) -> Optional[Path]:
    """The GGUF a model directory came from: the embedded model's converted directory maps to the package's
    file; any other directory may hold exactly one ``*.gguf`` beside its config."""
    from .default_model import MODEL_DIR_NAME, cache_root, find_gguf

    model_path = Path(model_path).resolve()
    if model_path == (cache_root() / "models" / MODEL_DIR_NAME).resolve():
        return find_gguf()
    files = sorted(model_path.glob("*.gguf"))
    return files[0] if len(files) == 1 else None


class GGUFBlocks:
    """One GGUF file's tensors by name (memory-mapped; only the tensors asked for are copied)."""

    def __init__(self, path: Path):
        from gguf import GGUFReader

        self.path = Path(path)
        self.reader = GGUFReader(str(path))
        self.tensors = {t.name: t for t in self.reader.tensors}
        arch = self._field("general.architecture") or "llama"
        self.n_head = int(self._field(f"{arch}.attention.head_count"))
        self.n_kv_head = int(self._field(f"{arch}.attention.head_count_kv") or self.n_head)

    def _field(self, key: str):
        f = self.reader.fields.get(key)
        if f is None:
            return None
        val = f.parts[f.data[0]]
        return bytes(val).decode() if val.dtype == "uint8" else val[0]

    def tensor(self, name: str, permute_heads: int = 0) -> PackedWeight:
        t = self.tensors.get(name)
        if t is None:
            raise KeyError(f"{self.path.name} has no tensor {name!r}")
        type_name = t.tensor_type.name
        if type_name not in TYPES:
            raise ValueError(f"{name} is {type_name}; the packed CPU kernel takes {sorted(TYPES)}")
        cols, rows = (int(v) for v in t.shape[:2])  # GGUF shapes list the fastest dimension first
        data = torch.from_numpy(t.data.reshape(rows, -1).copy())
        if data.shape[1] != cols // 32 * BLOCK_BYTES[TYPES[type_name]]:
            raise ValueError(f"{name}: {data.shape[1]} bytes per row do not fit {cols} {type_name} values")
        if permute_heads:  # undo llama.cpp's rotary-pair interleave: rows (h, i, j) -> (h, j, i)
            data = data.reshape(permute_heads, rows // permute_heads // 2, 2, -1).transpose(1, 2).reshape(rows, -1)
        return PackedWeight(TYPES[type_name], type_name, rows, cols, data.contiguous())

    def for_layer(self, prefix: str) -> PackedWeight:
        """The packed weight of our linear layer ``prefix`` (``layers.3.self_attn.qkv_proj``): fused layers
        are the GGUF parts stacked row-wise, which must share one type."""
        m = _LAYER.search(prefix)
        if m is None or m.group(2) not in _PARTS:
            raise KeyError(f"no GGUF tensor for layer {prefix!r}")
        layer, kind = m.group(1), m.group(2)
        perm = {"attn_q": self.n_head, "attn_k": self.n_kv_head}
        parts = [self.tensor(f"blk.{layer}.{p}.weight", perm.get(p, 0)) for p in _PARTS[kind]]
        if len({p.type_id for p in parts}) != 1:
            raise ValueError(f"{prefix}: GGUF parts of mixed types {[p.type_name for p in parts]}")
        data = parts[0].data if len(parts) == 1 else torch.cat([p.data for p in parts])
        return PackedWeight(parts[0].type_id, parts[0].type_name, sum(p.rows for p in parts), parts[0].cols, data)

    def lm_head(self) -> PackedWeight:
        """``output.weight``, or the tied token embedding."""
        return self.tensor("output.weight" if "output.weight" in self.tensors else "token_embd.weight")


@lru_cache(maxsize=2)
def open_blocks(path: str) -> GGUFBlocks:
    return GGUFBlocks(Path(path))
