"""sgl_jupyter: an SGLang-class LLM engine that lives inside the Jupyter kernel.

Heavy modules (torch, transformers) load on first use, so ``%load_ext sgl_jupyter`` stays quick.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from .lang import *  # noqa: E402,F401,F403  the SGLang DSL (imports no torch)

_LAZY = {
    "Engine": "sgl_jupyter.engine.engine",
    "EngineArgs": "sgl_jupyter.engine.config",
    "SamplingParams": "sgl_jupyter.engine.sampling",
    "default_model_path": "sgl_jupyter.engine.default_model",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sgl_jupyter' has no attribute {name!r}")


def load_ipython_extension(ip) -> None:
    """``%load_ext sgl_jupyter``: register the magics, the SGL config and the engine panel comm."""
    from .jupyter import load_ipython_extension as _load

    _load(ip)


def unload_ipython_extension(ip) -> None:
    from .jupyter import unload_ipython_extension as _unload

    _unload(ip)
