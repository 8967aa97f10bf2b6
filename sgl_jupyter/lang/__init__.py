"""The SGLang frontend language: programs (`@function`, `gen`, `select`, roles) on an in-process Engine or
an SGLang-compatible server. Semantics follow sgl-project/sglang's python/sglang/lang."""
from .api import (assistant, assistant_begin, assistant_end, flush_cache, function, gen, gen_int, gen_string,
                  get_default_backend, get_server_info, select, set_default_backend, system, system_begin,
                  system_end, user, user_begin, user_end)
from .backends import BaseBackend, EngineBackend, RuntimeEndpoint, RuntimeEndpointError
from .chat_template import ChatTemplate, get_chat_template, get_chat_template_by_model_path
from .choices import greedy_token_selection, token_length_normalized, unconditional_likelihood_normalized
from .interpreter import ProgramAborted, program_listener
from .program_state import ProgramState, ProgramStateGroup
from .ir import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR, SglFunction
from .runtime import Runtime

__all__ = [
    "function", "gen", "gen_int", "gen_string", "select",
    "system", "user", "assistant", "system_begin", "system_end", "user_begin", "user_end",
    "assistant_begin", "assistant_end",
    "set_default_backend", "get_default_backend", "flush_cache", "get_server_info",
    "Runtime", "RuntimeEndpoint", "RuntimeEndpointError", "EngineBackend", "BaseBackend",
    "ProgramState", "ProgramStateGroup", "ProgramAborted", "program_listener", "SglFunction",
    "ChatTemplate", "get_chat_template", "get_chat_template_by_model_path",
    "token_length_normalized", "greedy_token_selection", "unconditional_likelihood_normalized",
    "REGEX_INT", "REGEX_FLOAT", "REGEX_STR", "REGEX_BOOL",
]
