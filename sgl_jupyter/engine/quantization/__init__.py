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
from typing import Callable, Optional

import torch


class LinearQuantMethod(ABC):
    """How one linear layer stores and multiplies its weight."""

    name: str = ""

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
