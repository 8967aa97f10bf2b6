"""Attention backends behind one interface (base.AttentionBackend); chosen by device and flags."""
from __future__ import annotations

import logging
from typing import Optional

import torch

from .base import AttentionBackend

logger = logging.getLogger(__name__)


def available_backends(device: torch.device) -> list[str]:
    names = ["torch"]
    if device.type == "cuda":
        try:
            from . import triton_backend  # noqa: F401

            names.append("triton")
        except Exception:  # noqa: BLE001 - optional
            pass
        try:
            from . import flashinfer_backend  # noqa: F401

            if flashinfer_backend.is_available():
                names.append("flashinfer")
        except Exception:  # noqa: BLE001 - optional
            pass
    return names


def choose_backend_name(requested: str, device: torch.device, disable_flashinfer: bool = False,
                        dtype: Optional[torch.dtype] = None, kv_fp8: bool = False) -> str:
    """``auto``: FlashInfer when importable on CUDA (half precision, model-dtype KV cache only), else Triton
    on CUDA, else torch. An fp8 KV cache goes to Triton: its kernels upcast fp8 tiles with the layer's scales,
    while FlashInfer's fp8 paged prefill is not verified here."""
    avail = available_backends(device)
    half = dtype in (None, torch.float16, torch.bfloat16)
    if requested != "auto":
        if requested not in avail:
            raise ValueError(f"attention backend {requested!r} is not available on {device}; available: {avail}")
        if requested == "flashinfer" and not half:
            raise ValueError(f"FlashInfer has no {dtype} kernels: use --dtype bfloat16 or --attention-backend triton "
                             "(float32)")
        if requested == "flashinfer" and kv_fp8:
            raise ValueError("--kv-cache-dtype fp8_e4m3 runs on --attention-backend triton (or torch), "
                             "not flashinfer")
        return requested
    for name in ("flashinfer", "triton", "torch"):
        if name in avail and not (name == "flashinfer" and (disable_flashinfer or not half or kv_fp8)):
            if kv_fp8 and name == "triton" and "flashinfer" in avail:
                logger.info("fp8 KV cache: attention backend triton (FlashInfer's fp8 KV path is not used)")
            return name
    return "torch"


def create_attention_backend(name: str, **kwargs) -> AttentionBackend:
    if name == "torch":
        from .torch_ref import TorchAttnBackend

        return TorchAttnBackend(**kwargs)
    if name == "triton":
        from .triton_backend import TritonAttnBackend

        return TritonAttnBackend(**kwargs)
    if name == "flashinfer":
        from .flashinfer_backend import FlashInferAttnBackend

        return FlashInferAttnBackend(**kwargs)
    raise ValueError(f"unknown attention backend {name!r}")
