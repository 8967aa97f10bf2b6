"""The public functions of the language (SGLang's names and arguments)."""
from __future__ import annotations

import json
import re
import threading
import weakref
from typing import Any, Callable, Optional, Union

from .backends.base import BaseBackend
from .choices import ChoicesSamplingMethod, token_length_normalized
from .ir import (SglConstantText, SglExpr, SglExprList, SglFunction, SglGen, SglRoleBegin, SglRoleEnd,
                 SglSamplingParams, SglSelect)

_default_backend: Optional[BaseBackend] = None
_engine_backends: "weakref.WeakKeyDictionary[Any, BaseBackend]" = weakref.WeakKeyDictionary()
_engine_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------- programs
def function(func: Optional[Callable] = None, num_api_spec_tokens: Optional[int] = None):
    """Decorator: `@function def prog(s, ...)` makes an SGLang program (`prog.run(...)`, `prog.run_batch`).

    `num_api_spec_tokens` is accepted for compatibility; it only matters for chat-only API backends.
    """
    if func is not None:
        return SglFunction(func, num_api_spec_tokens=num_api_spec_tokens)
    return lambda f: SglFunction(f, num_api_spec_tokens=num_api_spec_tokens)


# ---------------------------------------------------------------------------------------------- backends
def as_backend(backend: Any) -> BaseBackend:
    """A backend from what users pass: a backend, a `Runtime`, an `Engine`, or a server URL."""
    from .runtime import Runtime

    if isinstance(backend, BaseBackend):
        return backend
    if isinstance(backend, Runtime):
        return backend.endpoint
    if isinstance(backend, str):
        from .backends.runtime_endpoint import RuntimeEndpoint

        return RuntimeEndpoint(backend)
    if all(hasattr(backend, a) for a in ("generate", "tokenizer", "flush_cache")):
        from .backends.engine_backend import EngineBackend

        with _engine_lock:
            try:
                wrapped = _engine_backends.get(backend)
            except TypeError:
                return EngineBackend(backend)
            if wrapped is None:
                wrapped = EngineBackend(backend)
                _engine_backends[backend] = wrapped
            return wrapped
    raise TypeError(f"not a backend: {type(backend).__name__}. Pass an sgl_jupyter.Engine, "
                    "RuntimeEndpoint('http://host:port'), or Runtime(...)")


def set_default_backend(backend: Any) -> BaseBackend:
    """Make `backend` (Engine, RuntimeEndpoint, Runtime or URL) the one programs run on by default."""
    global _default_backend
    _default_backend = None if backend is None else as_backend(backend)
    return _default_backend


def get_default_backend() -> Optional[BaseBackend]:
    return _default_backend


def resolve_backend(backend: Any = None, required: bool = True) -> Optional[BaseBackend]:
    if backend is None:
        backend = _default_backend
    if backend is None:
        if required:
            raise RuntimeError("no backend to run the program on: call sgl_jupyter.set_default_backend(Engine()) "
                               "or set_default_backend(RuntimeEndpoint('http://localhost:30000')), "
                               "or pass backend=... to run()")
        return None
    return as_backend(backend)


def flush_cache(backend: Any = None) -> Any:
    """Drop the backend's prefix cache (False/None if there is no backend or it refused)."""
    backend = resolve_backend(backend, required=False)
    return None if backend is None else backend.flush_cache()


def get_server_info(backend: Any = None) -> Any:
    backend = resolve_backend(backend, required=False)
    return None if backend is None else backend.get_server_info()


# ---------------------------------------------------------------------------------------------- steps
def _check_int(name: str, value: Any, low: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        raise ValueError(f"gen({name}=...) must be an integer >= {low}, got {value!r}")


def _check_number(name: str, value: Any, low: float, high: float) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not low <= value <= high):
        raise ValueError(f"gen({name}=...) must be a number in [{low}, {high}], got {value!r}")


def _check_stop(stop: Any) -> None:
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise TypeError(f"gen(stop=...) must be a string or a list of strings, got {stop!r}")


def _json_schema_str(schema: Any) -> Optional[str]:
    if schema is None or isinstance(schema, str):
        if isinstance(schema, str):
            try:
                json.loads(schema)
            except json.JSONDecodeError as e:
                raise ValueError(f"gen(json_schema=...) is not valid JSON: {e}") from None
        return schema
    if isinstance(schema, dict):
        return json.dumps(schema)
    if hasattr(schema, "model_json_schema"):  # a pydantic model class
        return json.dumps(schema.model_json_schema())
    raise TypeError(f"gen(json_schema=...) must be a JSON string, a dict or a pydantic model, got {schema!r}")


def gen(name: Optional[str] = None, max_tokens: Optional[int] = None, min_tokens: Optional[int] = None,
        n: Optional[int] = None, stop: Optional[Union[str, list[str]]] = None,
        stop_token_ids: Optional[list[int]] = None, stop_regex: Optional[Union[str, list[str]]] = None,
        temperature: Optional[float] = None, top_p: Optional[float] = None, top_k: Optional[int] = None,
        min_p: Optional[float] = None, frequency_penalty: Optional[float] = None,
        presence_penalty: Optional[float] = None, ignore_eos: Optional[bool] = None,
        return_logprob: Optional[bool] = None, logprob_start_len: Optional[int] = None,
        top_logprobs_num: Optional[int] = None, return_text_in_logprobs: Optional[bool] = None,
        dtype: Optional[Union[type, str]] = None, choices: Optional[list[str]] = None,
        choices_method: Optional[ChoicesSamplingMethod] = None, regex: Optional[str] = None,
        json_schema: Any = None) -> SglExpr:
    """Generate text into variable `name` (see SGLang's sampling parameters). With `choices`, a `select`."""
    if choices is not None:
        return select(name, choices, 0.0 if temperature is None else temperature,
                      token_length_normalized if choices_method is None else choices_method)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"gen(name) must be a string, got {name!r}")
    _check_int("max_tokens", max_tokens, 0)
    _check_int("min_tokens", min_tokens, 0)
    _check_int("n", n, 1)
    if max_tokens is not None and min_tokens is not None and min_tokens > max_tokens:
        raise ValueError(f"gen(min_tokens={min_tokens}) is larger than max_tokens={max_tokens}")
    _check_number("temperature", temperature, 0.0, float("inf"))
    _check_number("top_p", top_p, 0.0, 1.0)
    _check_number("min_p", min_p, 0.0, 1.0)
    _check_stop(stop)
    if stop_token_ids is not None and not all(isinstance(t, int) for t in stop_token_ids):
        raise TypeError(f"gen(stop_token_ids=...) must be a list of token ids, got {stop_token_ids!r}")
    if dtype is not None and dtype not in (int, float, str, bool, "int", "float", "str", "bool"):
        raise ValueError(f"gen(dtype=...) must be int, float, str or bool, got {dtype!r}")
    if regex is not None:
        try:
            re.compile(regex)
        except (re.error, TypeError) as e:
            raise ValueError(f"gen(regex={regex!r}) is not a valid regular expression: {e}") from None
    return SglGen(name, SglSamplingParams(
        max_new_tokens=max_tokens, min_new_tokens=min_tokens, n=n, stop=stop, stop_token_ids=stop_token_ids,
        stop_regex=stop_regex, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, ignore_eos=ignore_eos,
        return_logprob=return_logprob, logprob_start_len=logprob_start_len, top_logprobs_num=top_logprobs_num,
        return_text_in_logprobs=return_text_in_logprobs, dtype=dtype, regex=regex,
        json_schema=_json_schema_str(json_schema)))


def gen_int(name: Optional[str] = None, max_tokens: Optional[int] = None, **kwargs: Any) -> SglExpr:
    """Generate an integer (constrained by SGLang's integer regex)."""
    return gen(name, max_tokens, dtype=int, **kwargs)


def gen_string(name: Optional[str] = None, max_tokens: Optional[int] = None, **kwargs: Any) -> SglExpr:
    """Generate a double-quoted string (constrained by SGLang's string regex)."""
    return gen(name, max_tokens, dtype=str, **kwargs)


def select(name: Optional[str] = None, choices: Optional[list[str]] = None, temperature: float = 0.0,
           choices_method: ChoicesSamplingMethod = token_length_normalized) -> SglExpr:
    """Append the most likely of `choices` (scored by `choices_method`) and store it as `name`."""
    if choices is None:
        raise ValueError("select() needs choices=[...], a list of strings")
    if isinstance(choices, str) or not isinstance(choices, (list, tuple)):
        raise TypeError(f"select(choices=...) must be a list of strings, got {type(choices).__name__}: {choices!r}")
    if not choices:
        raise ValueError("select(choices=[]) needs at least one choice")
    for i, c in enumerate(choices):
        if not isinstance(c, str):
            raise TypeError(f"select(choices=...) must contain strings; item {i} is {type(c).__name__}: {c!r}")
        if not c:
            raise ValueError(f"select(choices=...) item {i} is an empty string; every choice needs text to score")
    if not isinstance(choices_method, ChoicesSamplingMethod):
        raise TypeError("select(choices_method=...) must be token_length_normalized, greedy_token_selection or "
                        f"unconditional_likelihood_normalized, got {choices_method!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"select(temperature=...) must be a number >= 0, got {temperature!r}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"select(name) must be a string, got {name!r}")
    return SglSelect(name, list(choices), float(temperature), choices_method)


def _role(role: str, expr: Any) -> SglExprList:
    if expr is None:
        return SglExprList([SglRoleBegin(role), SglRoleEnd(role)])
    if isinstance(expr, str):
        expr = SglConstantText(expr)
    if not isinstance(expr, SglExpr):
        raise TypeError(f"{role}(...) takes text or program steps, got {type(expr).__name__}")
    return SglExprList([SglRoleBegin(role), expr, SglRoleEnd(role)])


def system(expr: Any = None) -> SglExprList:
    return _role("system", expr)


def user(expr: Any = None) -> SglExprList:
    return _role("user", expr)


def assistant(expr: Any = None) -> SglExprList:
    return _role("assistant", expr)


def system_begin() -> SglRoleBegin:
    return SglRoleBegin("system")


def system_end() -> SglRoleEnd:
    return SglRoleEnd("system")


def user_begin() -> SglRoleBegin:
    return SglRoleBegin("user")


def user_end() -> SglRoleEnd:
    return SglRoleEnd("user")


def assistant_begin() -> SglRoleBegin:
    return SglRoleBegin("assistant")


def assistant_end() -> SglRoleEnd:
    return SglRoleEnd("assistant")
