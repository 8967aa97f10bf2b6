"""The inference engine. Imports nothing from lang, server or jupyter."""
from .config import EngineArgs
from .default_model import default_model_path
from .engine import Engine
from .errors import (EngineDeadError, EngineError, EngineOverloadedError, InvalidRequestError, KVCacheOOMError,
                     ModelLoadError)
from .sampling import SamplingParams

__all__ = ["Engine", "EngineArgs", "SamplingParams", "default_model_path", "EngineError", "EngineDeadError",
           "EngineOverloadedError", "InvalidRequestError", "KVCacheOOMError", "ModelLoadError"]
