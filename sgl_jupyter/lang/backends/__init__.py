"""Backends programs run on: the in-process Engine and SGLang's native HTTP API."""
from .base import BaseBackend
from .engine_backend import EngineBackend
from .runtime_endpoint import RuntimeEndpoint, RuntimeEndpointError

__all__ = ["BaseBackend", "EngineBackend", "RuntimeEndpoint", "RuntimeEndpointError"]
