"""``quantization="fp8"``: every linear layer's weight in FP8 e4m3 with one fp32 scale per output row.

Why weight-only at small batches: a bs=1 decode step reads every weight once, so halving the weight bytes
nearly halves the step; the activations cost nothing to keep in bf16 there, and quantizing them per token
was what lost accuracy in an earlier attempt (perplexity +3.3%, greedy agreement 9/32 on the embedded model).
So rows of activations are multiplied as they are by weights upcast in registers (``kernels/gemv.py`` for one
row, ``kernels/fp8.w8a16_matmul`` for a few), and only batches of ``act_quant_min_tokens`` rows or more
(prefill, large decode batches: arithmetic-bound) quantize activations per token for the FP8 tensor cores
(``torch._scaled_mm``, Hopper). Raising ``Fp8LinearMethod.act_quant_min_tokens`` (a class attribute) keeps
larger batches weight-only (bf16 tensor cores).

Weights come either dense (quantized here, after loading) or from an FP8 checkpoint
(``quantization_config.quant_method == "fp8"``: e4m3 ``weight`` with a per-tensor or per-channel
``weight_scale``); ``prepare_checkpoint`` gives the layers the matching parameters before the weights load.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from sgl_jupyter.kernels import fp8 as fp8_kernels
from sgl_jupyter.kernels import gemv
from sgl_jupyter.kernels._triton import HAS_TRITON

from . import LinearQuantMethod, linear_layers, register

MIN_CAPABILITY = (8, 9)  # Ada / Hopper / Blackwell: e4m3 conversions and FP8 tensor cores
SCALED_MM_CAPABILITY = (9, 0)  # rowwise-scaled torch._scaled_mm


def checkpoint_fp8_config(hf_config: Any) -> Optional[dict]:
    """The checkpoint's ``quantization_config`` when it holds FP8 weights, else None."""
    qc = getattr(hf_config, "quantization_config", None)
    if qc is None:
        return None
    qc = qc if isinstance(qc, dict) else (qc.to_dict() if hasattr(qc, "to_dict") else vars(qc))
    return qc if qc.get("quant_method") == "fp8" else None


def _ignored(prefix: str, qc: dict) -> bool:
    """Layers the checkpoint keeps dense (``ignored_layers`` / ``modules_to_not_convert``)."""
    names = list(qc.get("ignored_layers") or []) + list(qc.get("modules_to_not_convert") or [])
    ours = prefix.removeprefix("model.")
    return any(ours == n.removeprefix("model.") or ours.endswith("." + n) for n in names)


def prepare_checkpoint(model: nn.Module, hf_config: Any) -> bool:
    """Before an FP8 checkpoint loads: each quantized linear layer gets an e4m3 ``weight`` and an fp32
    per-row ``weight_scale`` (+ ``input_scale`` for static activation scales, read and not used: activations
    are scaled per token at run time), so the loader copies the checkpoint's bytes as they are.
    Returns False (nothing done) for a checkpoint that is not FP8."""
    qc = checkpoint_fp8_config(hf_config)
    if qc is None:
        return False
    if qc.get("weight_block_size"):
        raise ValueError(f"block-wise FP8 checkpoints (weight_block_size={qc['weight_block_size']}) are not "
                         "supported; use a per-tensor or per-channel FP8 checkpoint, or the bf16 model with "
                         "--quantization fp8")
    static = qc.get("activation_scheme", "dynamic") == "static"
    for prefix, layer in linear_layers(model):
        if _ignored(prefix, qc):
            continue
        w = layer.weight
        layer.weight = nn.Parameter(torch.empty(w.shape, dtype=fp8_kernels.FP8_DTYPE, device=w.device),
                                    requires_grad=False)
        layer.weight_scale = nn.Parameter(torch.ones(w.shape[0], dtype=torch.float32, device=w.device),
                                          requires_grad=False)
        if static:
            parts = len(getattr(layer, "parts", [None]))
            layer.input_scale = nn.Parameter(torch.ones(parts, dtype=torch.float32, device=w.device),
                                             requires_grad=False)
    return True


@register("fp8")
class Fp8LinearMethod(LinearQuantMethod):
    """FP8 e4m3 weights, per-output-row fp32 scales; bf16 activations below ``act_quant_min_tokens`` rows."""

    act_quant_min_tokens: int = 256

    def check(self, device: torch.device, model_path: Path) -> None:
        if device.type != "cuda":
            raise ValueError("fp8 weights run on an NVIDIA GPU with FP8 (compute capability 8.9+: Ada, Hopper, "
                             f"Blackwell), not on {device.type}; on CPU load the model dense (--dtype float32 "
                             "or bfloat16) or as GGUF blocks")
        cap = torch.cuda.get_device_capability(device)
        if cap < MIN_CAPABILITY:
            raise ValueError(f"{torch.cuda.get_device_name(device)} (compute capability {cap[0]}.{cap[1]}) has no "
                             "FP8; fp8 weights need 8.9+ (Ada, Hopper, Blackwell): load the model in bfloat16")
        if not HAS_TRITON:
            raise ValueError("fp8 weights need the `triton` package (pip install 'sgl_jupyter[gpu]')")

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        w = layer.weight
        if w.dtype == fp8_kernels.FP8_DTYPE:  # from an FP8 checkpoint: keep its bytes and scales
            q, scale = w.data, layer.weight_scale.data.float().contiguous()
        else:
            q, scale = fp8_kernels.quantize_weight(w.data)
        layer.weight = nn.Parameter(q, requires_grad=False)
        layer.weight_scale = nn.Parameter(scale, requires_grad=False)
        del w
        if q.is_cuda:
            torch.cuda.empty_cache()  # the dense weight's memory goes back, so the KV pool can size itself on it

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        q, scale = layer.weight, layer.weight_scale
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        if x.stride(-1) != 1:
            x = x.contiguous()
        if not x.is_cuda:  # the reference, with the GPU's rounding policy (tests, accuracy estimates on CPU)
            if x.shape[0] >= self.act_quant_min_tokens:
                xq, xs = fp8_kernels.quantize_rows_ref(x)
                x = (xq.float() * xs).to(x.dtype)
            y = F.linear(x, fp8_kernels.dequantize_weight(q, scale, x.dtype), bias)
        elif x.shape[0] == 1:
            y = gemv.gemv_triton(x, q, bias, scale=scale)
        elif (x.shape[0] >= self.act_quant_min_tokens and x.dtype == torch.bfloat16  # rowwise scales: bf16 out
              and fp8_kernels.scaled_mm_ok(*q.shape)
              and torch.cuda.get_device_capability(x.device) >= SCALED_MM_CAPABILITY):
            y = fp8_kernels.scaled_matmul(x, q, scale, bias)
        else:
            y = fp8_kernels.w8a16_matmul(x, q, scale, bias)
        return y.reshape(*shape[:-1], q.shape[0])

