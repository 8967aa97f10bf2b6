"""Typed errors: each says what went wrong and what to do about it."""
from __future__ import annotations


class EngineError(RuntimeError):
    """Base class of every error the engine raises on purpose."""


class ModelLoadError(EngineError):
    """The model directory cannot be loaded (missing files, unsupported architecture, ...)."""


class InvalidRequestError(ValueError):
    """A request's parameters are invalid; the message names the field and the allowed range."""


class EngineOverloadedError(EngineError):
    """The waiting queue is full; retry later (HTTP 503)."""


class EngineDeadError(EngineError):
    """The engine has been shut down or its scheduler thread died."""


class KVCacheOOMError(EngineError):
    """Not enough memory for the weights or the KV cache; the message names the knob to turn."""
