"""``quantization="gguf"``: a model converted from a GGUF keeps the file's Q4_0/Q4_1/Q8_0 blocks in memory on
the CPU (about 4.5x fewer bytes per decode step than fp32) and multiplies them with int8-quantized activations
in a small C kernel (``sgl_jupyter.kernels.gguf_cpu``), as llama.cpp does. The fp32 dequantized weights stay
the default and the HF-equality oracle; this path trades exactness (activations rounded to int8 blocks) for
speed, and its tolerance against fp32 is a test (tests/engine/test_gguf_cpu.py).

The packed rows are read from the GGUF once and cached as safetensors in the user cache (parsing a GGUF's
metadata takes seconds; loading the cache takes milliseconds)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch

from sgl_jupyter.kernels import gguf_cpu as kernel

from . import LinearQuantMethod, register
from ..gguf_blocks import PackedWeight, find_gguf_for, open_blocks


def packed_cache_path(gguf: Path) -> Path:
    from ..default_model import cache_root

    st = gguf.stat()
    return cache_root() / "gguf_packed" / f"{gguf.stem}-{st.st_size}-{int(st.st_mtime)}.safetensors"


def load_packed(gguf: Path, prefixes: list[str]) -> dict[str, PackedWeight]:
    """Packed weights of ``prefixes`` (plus ``lm_head``), from the cache or (once, under a lock) the GGUF."""
    from filelock import FileLock
    from safetensors.torch import load_file, save_file

    path = packed_cache_path(gguf)
    wanted = [*prefixes, "lm_head"]
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not path.is_file():
                blocks = open_blocks(str(gguf))
                tensors, meta = {}, {}
                for name in wanted:
                    pw = blocks.lm_head() if name == "lm_head" else blocks.for_layer(name)
                    tensors[name] = pw.data
                    meta[name] = f"{pw.type_id},{pw.type_name},{pw.rows},{pw.cols}"
                fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=path.parent)
                os.close(fd)
                try:
                    save_file(tensors, tmp, metadata=meta)
                    os.replace(tmp, path)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    data = load_file(str(path))
    missing = [n for n in wanted if n not in data]
    if missing:
        raise ValueError(f"{path} lacks {missing[:3]}: delete it to rebuild")
    out = {}
    for name in wanted:
        type_id, type_name, rows, cols = meta[name].split(",")
        out[name] = PackedWeight(int(type_id), type_name, int(rows), int(cols), data[name])
    return out


def interleaved(pw: PackedWeight) -> PackedWeight:
    """The kernel's fast layout of ``pw`` (8 rows side by side per block); GGUF bytes, reordered."""
    type_id, data = kernel.interleave(pw.type_id, pw.data, pw.rows, pw.cols)
    return PackedWeight(type_id, pw.type_name, pw.rows, pw.cols, data)


@register("gguf")
class GGUFCpuMethod(LinearQuantMethod):
    """Packed GGUF rows on the CPU. One instance serves the whole model (the loader shares it)."""

    def __init__(self):
        self.gguf: Optional[Path] = None
        self.packed: dict[str, PackedWeight] = {}
        self.threads = 0
        self.num_layers = 0

    def check(self, device: torch.device, model_path: Path) -> None:
        if device.type != "cpu":
            raise ValueError("quantization='gguf' runs on the CPU only; on a GPU leave it unset (bf16) or use 'fp8'")
        self.gguf = find_gguf_for(model_path)
        if self.gguf is None:
            raise ValueError(f"quantization='gguf' needs the GGUF the model came from: {model_path} is neither the "
                             "embedded model nor a directory with exactly one *.gguf")
        cfg = json.loads((Path(model_path) / "config.json").read_text())
        self.num_layers = int(cfg["num_hidden_layers"])
        kernel.lib()  # compile now: a missing compiler is a load error, not a failure at the first request
        self.threads = torch.get_num_threads()

    def _packed(self, prefix: str) -> PackedWeight:
        if not self.packed:
            self.packed = load_packed(self.gguf, [f"layers.{i}.{p}" for i in range(self.num_layers) for p in
                                                  ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj",
                                                   "mlp.down_proj")])
        if prefix not in self.packed:
            raise ValueError(f"no GGUF tensor for layer {prefix!r}")
        return self.packed[prefix]

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        pw = self._packed(layer.prefix.removeprefix("model."))
        if (pw.rows, pw.cols) != tuple(layer.weight.shape):
            raise ValueError(f"{layer.prefix}: GGUF tensor {pw.rows}x{pw.cols} does not fit {tuple(layer.weight.shape)}")
        layer.packed = interleaved(pw)
        layer.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)  # the dense copy is freed

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        pw: PackedWeight = layer.packed
        shape = x.shape
        y = kernel.linear(pw.type_id, pw.data, pw.rows, pw.cols, x.reshape(-1, shape[-1]), self.threads)
        y = y.reshape(*shape[:-1], pw.rows).to(x.dtype)
        return y if bias is None else y + bias

    def lm_head(self) -> Optional[PackedWeight]:
        head = self.packed.get("lm_head")
        return None if head is None else interleaved(head)
