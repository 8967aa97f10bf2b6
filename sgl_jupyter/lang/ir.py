"""The program's intermediate representation: expressions a program appends to its state.

`gen`, `select`, role markers and constant text are `SglExpr` nodes; `a + b` concatenates them into an
`SglExprList`. Nothing runs until a node is appended to a `ProgramState` (`s += ...`).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Optional, Union

from .choices import ChoicesSamplingMethod

# Regexes behind gen(dtype=...) (SGLang's, so programs constrain the same way on both backends).
REGEX_INT = r"[-+]?[0-9]+[ \n]*"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r"\"[\w\d\s]*\""

_OUTSIDE = ("{what} is a step of an SGLang program and has no value here: append it to a program state "
            "inside a program (`s += gen('x')`, then read `s['x']`), or return it from a function passed to "
            "`Runtime.run` / `.run()` it through an `@function`.")


@dataclasses.dataclass
class SglSamplingParams:
    """Sampling parameters (SGLang's names). ``None`` means "not set here": `gen` values override the
    defaults given to `run()`."""

    max_new_tokens: Optional[int] = None
    min_new_tokens: Optional[int] = None
    n: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: Optional[list[int]] = None
    stop_regex: Optional[Union[str, list[str]]] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    frequency_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    repetition_penalty: Optional[float] = None
    ignore_eos: Optional[bool] = None
    seed: Optional[int] = None
    return_logprob: Optional[bool] = None
    logprob_start_len: Optional[int] = None
    top_logprobs_num: Optional[int] = None
    return_text_in_logprobs: Optional[bool] = None
    # constrained decoding
    dtype: Optional[Union[type, str]] = None
    regex: Optional[str] = None
    json_schema: Optional[str] = None

    def merged(self, override: "SglSamplingParams") -> "SglSamplingParams":
        """A copy of self with every field that `override` sets replaced."""
        out = dataclasses.replace(self)
        for f in dataclasses.fields(override):
            value = getattr(override, f.name)
            if value is not None:
                setattr(out, f.name, list(value) if isinstance(value, (list, tuple)) else value)
        if isinstance(out.stop, tuple):
            out.stop = list(out.stop)
        return out

    def to_srt_kwargs(self) -> dict[str, Any]:
        """The `sampling_params` dict of SGLang's /generate (and of `Engine.generate`)."""
        keys = ("max_new_tokens", "min_new_tokens", "n", "stop", "stop_token_ids", "stop_regex", "temperature",
                "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty",
                "ignore_eos", "seed", "regex", "json_schema")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


def default_sampling_params(**kwargs: Any) -> SglSamplingParams:
    """The defaults of `run()` (SGLang's): 128 new tokens, temperature 1.0, no stop."""
    base = SglSamplingParams(max_new_tokens=128, stop=[], stop_token_ids=[], temperature=1.0, top_p=1.0,
                             top_k=-1, min_p=0.0, frequency_penalty=0.0, presence_penalty=0.0, ignore_eos=False)
    return base.merged(SglSamplingParams(**kwargs))


# ---------------------------------------------------------------------------------------------- expressions
class SglExpr:
    """A step of a program. `+` builds a sequence; using it as a value (f-string, `in`, `if`) is an error."""

    def __add__(self, other: Any) -> "SglExprList":
        return _concat(self, _as_expr(other))

    def __radd__(self, other: Any) -> "SglExprList":
        return _concat(_as_expr(other), self)

    def __format__(self, spec: str) -> str:
        raise TypeError(_OUTSIDE.format(what=repr(self)))

    def __contains__(self, item: Any) -> bool:
        raise TypeError(_OUTSIDE.format(what=repr(self)))

    def __iter__(self):
        raise TypeError(_OUTSIDE.format(what=repr(self)))

    def __bool__(self) -> bool:
        raise TypeError(_OUTSIDE.format(what=repr(self)))

    def __eq__(self, other: Any) -> bool:  # `if gen() == "x"` is a bug, not a comparison
        if isinstance(other, str):
            raise TypeError(_OUTSIDE.format(what=repr(self)))
        return self is other

    __hash__ = object.__hash__


def _as_expr(value: Any) -> SglExpr:
    if isinstance(value, SglExpr):
        return value
    if isinstance(value, str):
        return SglConstantText(value)
    raise TypeError(f"cannot add {type(value).__name__} to a program: use str(...) for values, "
                    "or gen()/select()/user()/... for program steps")


def _concat(a: SglExpr, b: SglExpr) -> "SglExprList":
    left = a.expr_list if isinstance(a, SglExprList) else [a]
    right = b.expr_list if isinstance(b, SglExprList) else [b]
    return SglExprList(left + right)


class SglExprList(SglExpr):
    def __init__(self, expr_list: list[SglExpr]):
        self.expr_list = expr_list

    def __repr__(self) -> str:
        return f"ExprList({self.expr_list})"


class SglConstantText(SglExpr):
    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return f"Constant({self.value!r})"


class SglGen(SglExpr):
    def __init__(self, name: Optional[str], sampling_params: SglSamplingParams):
        self.name = name
        self.sampling_params = sampling_params

    def __repr__(self) -> str:
        return f"Gen({self.name!r})"


class SglSelect(SglExpr):
    def __init__(self, name: Optional[str], choices: list[str], temperature: float,
                 choices_method: ChoicesSamplingMethod):
        self.name = name
        self.choices = choices
        self.temperature = temperature
        self.choices_method = choices_method

    def __repr__(self) -> str:
        return f"Select({self.name!r}, choices={self.choices}, choices_method={self.choices_method})"


class SglRoleBegin(SglExpr):
    def __init__(self, role: str):
        self.role = role

    def __repr__(self) -> str:
        return f"RoleBegin({self.role})"


class SglRoleEnd(SglExpr):
    def __init__(self, role: str):
        self.role = role

    def __repr__(self) -> str:
        return f"RoleEnd({self.role})"


class SglVarScopeBegin(SglExpr):
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"VarScopeBegin({self.name!r})"


class SglVarScopeEnd(SglExpr):
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"VarScopeEnd({self.name!r})"


class SglCommitLazy(SglExpr):
    """Send the text so far to the backend (prefill only) so forks share its KV cache."""

    def __repr__(self) -> str:
        return "CommitLazy()"


class SglConcateAndAppend(SglExpr):
    """Append the text each fork added since the fork (join mode "concate_and_append")."""

    def __init__(self, states: list[Any]):
        self.states = states

    def __repr__(self) -> str:
        return f"ConcateAndAppend({len(self.states)} states)"


class SglArgument(SglExpr):
    """A placeholder for a program argument while tracing (its value is unknown)."""

    def __init__(self, name: str, value: Any = None):
        self.name = name
        self.value = value

    def __repr__(self) -> str:
        return f"Argument({self.name!r})"

    def __format__(self, spec: str) -> str:
        raise TypeError("cannot put a traced program argument inside an f-string")

    def __str__(self) -> str:  # its value is unknown while tracing: stop the trace rather than invent text
        raise TypeError(f"program argument {self.name!r} has no value while tracing")


class SglVariable(SglExpr):
    """A reference, while tracing, to the value a gen/select will produce."""

    def __init__(self, name: str, source: SglExpr):
        self.name = name
        self.source = source

    def __repr__(self) -> str:
        return f"Variable({self.name!r})"


# ---------------------------------------------------------------------------------------------- functions
class SglFunction:
    """A program: a Python function whose first parameter is the program state (`s`)."""

    def __init__(self, func: Callable, num_api_spec_tokens: Optional[int] = None,
                 bind_arguments: Optional[dict[str, Any]] = None):
        if not callable(func):
            raise TypeError(f"@function needs a callable, got {type(func).__name__}")
        params = list(inspect.signature(func).parameters.values())
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        if not params or params[0].kind not in positional:
            raise TypeError(f"an SGLang program's first parameter is the program state, e.g. "
                            f"`def {getattr(func, '__name__', 'program')}(s, ...)`")
        self.func = func
        self.num_api_spec_tokens = num_api_spec_tokens  # accepted; our backends are completion backends
        self.bind_arguments = dict(bind_arguments or {})
        self.state_arg_name = params[0].name
        self.arg_names = [p.name for p in params[1:] if p.kind in positional or p.kind == p.KEYWORD_ONLY]
        self.arg_defaults = [p.default for p in params[1:] if p.default is not p.empty]
        self._accepts_var_kwargs = any(p.kind == p.VAR_KEYWORD for p in params)
        self.__name__ = getattr(func, "__name__", "program")
        self.__doc__ = getattr(func, "__doc__", None)

    def __repr__(self) -> str:
        return f"SglFunction({self.__name__})"

    def bind(self, **kwargs: Any) -> "SglFunction":
        """A copy with some arguments fixed (they are also part of the traced prefix)."""
        unknown = [k for k in kwargs if k not in self.arg_names and not self._accepts_var_kwargs]
        if unknown:
            raise TypeError(f"{self.__name__}() has no argument(s) {unknown}; its arguments are {self.arg_names}")
        return SglFunction(self.func, self.num_api_spec_tokens, {**self.bind_arguments, **kwargs})

    def run(self, *args: Any, max_new_tokens: int = 128, min_new_tokens: Optional[int] = None,
            stop: Union[str, list[str], None] = None, stop_token_ids: Optional[list[int]] = None,
            temperature: float = 1.0, top_p: float = 1.0, top_k: int = -1, min_p: float = 0.0,
            frequency_penalty: float = 0.0, presence_penalty: float = 0.0, ignore_eos: bool = False,
            return_logprob: Optional[bool] = None, logprob_start_len: Optional[int] = None,
            top_logprobs_num: Optional[int] = None, return_text_in_logprobs: Optional[bool] = None,
            seed: Optional[int] = None, stream: bool = False, backend: Any = None, **kwargs: Any):
        """Run the program once; returns its `ProgramState` (raises the program's first error).

        The keyword arguments above are the defaults for every `gen` (SGLang's); `seed` makes sampling at
        temperature > 0 reproducible; other keyword arguments are the program's."""
        from .runner import run_program

        defaults = default_sampling_params(
            max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, stop=stop, stop_token_ids=stop_token_ids,
            temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, ignore_eos=ignore_eos, return_logprob=return_logprob,
            logprob_start_len=logprob_start_len, top_logprobs_num=top_logprobs_num,
            return_text_in_logprobs=return_text_in_logprobs, seed=seed)
        return run_program(self, _backend(backend), args, kwargs, defaults, stream)

    def run_batch(self, batch_kwargs: Union[list, tuple], *, max_new_tokens: int = 128,
                  min_new_tokens: Optional[int] = None, stop: Union[str, list[str], None] = None,
                  stop_token_ids: Optional[list[int]] = None, temperature: float = 1.0, top_p: float = 1.0,
                  top_k: int = -1, min_p: float = 0.0, frequency_penalty: float = 0.0,
                  presence_penalty: float = 0.0, ignore_eos: bool = False, return_logprob: Optional[bool] = None,
                  logprob_start_len: Optional[int] = None, top_logprobs_num: Optional[int] = None,
                  return_text_in_logprobs: Optional[bool] = None, seed: Optional[int] = None, backend: Any = None,
                  num_threads: Union[str, int] = "auto", progress_bar: bool = False,
                  generator_style: bool = False):
        """Run the program once per argument dict (or tuple), concurrently; returns states in order."""
        from .runner import run_program_batch

        if not isinstance(batch_kwargs, (list, tuple)):
            raise TypeError(f"run_batch takes a list of argument dicts, got {type(batch_kwargs).__name__}")
        batch = [self._as_kwargs(item, i) for i, item in enumerate(batch_kwargs)]
        defaults = default_sampling_params(
            max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, stop=stop, stop_token_ids=stop_token_ids,
            temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, ignore_eos=ignore_eos, return_logprob=return_logprob,
            logprob_start_len=logprob_start_len, top_logprobs_num=top_logprobs_num,
            return_text_in_logprobs=return_text_in_logprobs, seed=seed)
        if not batch:
            return []
        return run_program_batch(self, _backend(backend), batch, defaults, num_threads, progress_bar,
                                 generator_style)

    def _as_kwargs(self, item: Any, index: int) -> dict[str, Any]:
        if isinstance(item, dict):
            return dict(item)
        if isinstance(item, (list, tuple)):
            required = len(self.arg_names) - len(self.arg_defaults)
            if not required <= len(item) <= len(self.arg_names):
                raise TypeError(f"run_batch item {index} has {len(item)} values; {self.__name__}() takes "
                                f"{required}..{len(self.arg_names)} arguments {self.arg_names}")
            return dict(zip(self.arg_names, item))
        raise TypeError(f"run_batch item {index} must be a dict (or tuple) of arguments, got {type(item).__name__}")

    def trace(self, *, backend: Any = None, **kwargs: Any):
        """Run the program symbolically (arguments become placeholders); returns the tracer state."""
        from .tracer import trace_program

        return trace_program(self, kwargs, _backend(backend, required=False))

    def cache(self, backend: Any = None) -> None:
        """Prefill the program's constant prefix so later runs hit the prefix cache."""
        from .runner import cache_program

        cache_program(self, _backend(backend))

    def __call__(self, *args: Any, **kwargs: Any):
        from .tracer import TracingScope

        scope = TracingScope.get_current_scope()
        if scope is None:
            return self.run(*args, **kwargs)
        return self.trace(backend=scope.tracer_state.backend, **kwargs)


def _backend(backend: Any, required: bool = True):
    from .api import resolve_backend

    return resolve_backend(backend, required=required)
