"""Quantized linear weights behind the one linear interface (DESIGN.md: layers/).

A linear layer (``layers/linear.py``) has ``quant_method: Optional[LinearQuantMethod]``. When it is set,
the layer's forward calls ``quant_method.apply(layer, x, bias)`` instead of the dense matmul, and the loader
calls ``quant_method.process_weights_after_loading(layer)`` once every weight of the model is in place (the
moment a method packs or quantizes the dense weight it was given, and frees it). Methods register by name;
``EngineArgs.quantization`` picks one (None: dense weights in ``dtype``).

Why one seam: fp8 on the GPU and GGUF blocks kept packed on the CPU are two implementations of the same
contract, so models, tensor parallelism and the scheduler never know which one a layer has."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Optional

import torch


class LinearQuantMethod(ABC):
    """How one linear layer stores and multiplies its weight."""

    name: str = ""

    def check(self, device: torch.device, model_path: Path) -> None:
        """Raise ``ValueError`` with the fix when this method cannot run here (e.g. fp8 on a GPU without
        FP8, or packed GGUF blocks for a model that came from no GGUF). Called once, before any layer."""

    @abstractmethod
    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Replace ``layer.weight`` (dense, as loaded) by this method's packed tensors."""

    @abstractmethod
    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """``x @ W.T (+ bias)`` with the packed weight; ``x`` is ``[tokens, in_features]``."""


_REGISTRY: dict[str, Callable[[], LinearQuantMethod]] = {}


def register(name: str) -> Callable:
    """Class decorator: ``@register("fp8")`` makes ``quantization="fp8"`` build that method."""

    def wrap(cls):
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return wrap


def names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get_method(name: str) -> LinearQuantMethod:
    if name not in _REGISTRY:
        raise ValueError(f"quantization must be one of {names()} or None, got {name!r}")
    return _REGISTRY[name]()


def linear_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Every layer that has the ``quant_method`` hook, by qualified name (``model.layers.3.mlp.down_proj``)."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "quant_method")]


def quantize_model(model: torch.nn.Module, name: Optional[str], *, model_path: Path, device: torch.device) -> None:
    """The loader's one call once the dense weights are in place: give every linear layer the method named
    ``name`` (one shared instance; per-layer state lives on the layer) and let it pack its weight.
    ``layer.prefix`` tells a method which checkpoint tensor the layer is (GGUF blocks are looked up by it)."""
    if name is None:
        return
    method = get_method(name)
    method.check(device, Path(model_path))
    for prefix, layer in linear_layers(model):
        layer.prefix = prefix
        layer.quant_method = method
        method.process_weights_after_loading(layer)


from . import fp8  # noqa: E402,F401  (registers "fp8")
from . import gguf_cpu  # noqa: E402,F401  (registers "gguf")
