"""`Runtime`: the seed article's entry point, over a server URL or a local in-process engine.

    rt = Runtime(endpoint="http://localhost:30000")   # or Runtime("http://..."), or Runtime(model_path=...)
    state = rt.run(get_user_info)                      # an @function, or a plain function returning steps
    print(state.text)
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

from .ir import SglExpr, SglFunction


class Runtime:
    """A backend plus conveniences. `endpoint`: a server speaking SGLang's native API; otherwise an
    in-process `Engine` is started from `model_path` (None: the embedded model) and `engine_args`, or an
    existing one is used (`engine=`). `sampling_defaults` (e.g. ``{"temperature": 0}`` or ``{"seed": 1}``)
    apply to every `run`/`run_batch` call that does not set them."""

    def __init__(self, endpoint: Optional[str] = None, *, model_path: Optional[str] = None,
                 api_key: Optional[str] = None, engine: Any = None, chat_template_name: Optional[str] = None,
                 log_level: Optional[str] = None, sampling_defaults: Optional[dict] = None, **engine_args: Any):
        from .backends.engine_backend import EngineBackend
        from .backends.runtime_endpoint import RuntimeEndpoint

        self.url: Optional[str] = None
        self.engine = None
        self.sampling_defaults = dict(sampling_defaults or {})
        if endpoint is not None:
            if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
                raise ValueError(f"Runtime(endpoint) must be a URL like 'http://localhost:30000', got {endpoint!r} "
                                 "(to load a model in this process use Runtime(model_path=...))")
            if model_path is not None or engine is not None or engine_args:
                raise ValueError("Runtime takes either endpoint=URL or a local model (model_path=/engine=), not both")
            self.url = endpoint.rstrip("/")
            self.endpoint = RuntimeEndpoint(self.url, api_key=api_key, chat_template_name=chat_template_name)
            return
        owns = engine is None
        if engine is None:
            from ..engine.engine import Engine

            if log_level is not None:
                engine_args["log_level"] = log_level
            engine = Engine(model_path, **engine_args)
        self.engine = engine
        self.endpoint = EngineBackend(engine, chat_template_name=chat_template_name, owns_engine=owns)

    def __repr__(self) -> str:
        return f"Runtime({self.url or self.endpoint!r})"

    # ------------------------------------------------------------------ running programs
    def run(self, program: Callable, *args: Any, **kwargs: Any):
        """Run an `@function` program, or a plain function that returns program steps
        (e.g. `user(...) + assistant(gen(...))`), on this runtime; returns the program state."""
        return as_program(program, kwargs).run(*args, backend=self.endpoint, **{**self.sampling_defaults, **kwargs})

    def run_batch(self, program: Callable, batch_kwargs: list, **kwargs: Any):
        return as_program(program, batch_kwargs[0] if batch_kwargs and isinstance(batch_kwargs[0], dict) else {}) \
            .run_batch(batch_kwargs, backend=self.endpoint, **{**self.sampling_defaults, **kwargs})

    def generate(self, prompt: Any, sampling_params: Optional[dict] = None, **kwargs: Any) -> Any:
        """One raw /generate call (SGLang's result dict, or a list for a list of prompts)."""
        return self.endpoint._request(text=prompt, sampling_params=sampling_params or {}, **kwargs)

    # ------------------------------------------------------------------ the backend's services
    def cache_prefix(self, prefix: str) -> None:
        self.endpoint.cache_prefix(prefix)

    def flush_cache(self) -> Any:
        return self.endpoint.flush_cache()

    def get_server_info(self) -> Any:
        return self.endpoint.get_server_info()

    def get_tokenizer(self) -> Any:
        if self.engine is None:
            raise RuntimeError("a Runtime over HTTP has no local tokenizer; load it from the model path")
        return self.engine.tokenizer

    def shutdown(self) -> None:
        self.endpoint.shutdown()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def as_program(program: Callable, kwargs: dict) -> SglFunction:
    """An `SglFunction` for `program`: itself, a state-taking function, or a function returning steps."""
    if isinstance(program, SglFunction):
        return program
    if not callable(program):
        raise TypeError(f"run() needs an @function program or a function returning program steps, "
                        f"got {type(program).__name__}")
    params = list(inspect.signature(program).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if params and params[0].kind in positional and params[0].default is params[0].empty \
            and (params[0].name == "s" or params[0].name not in kwargs):
        return SglFunction(program)
    return SglFunction(_expression_program(program))


def _expression_program(builder: Callable) -> Callable:
    """Wrap `builder(**kwargs) -> steps` as a program that appends the steps."""

    def program(s, **kwargs):
        steps = builder(**kwargs)
        if steps is None:
            raise TypeError(f"{getattr(builder, '__name__', 'the function')}() returned None; return program "
                            "steps such as `user(...) + assistant(gen(...))`, or write `@function def f(s): ...`")
        if not isinstance(steps, (SglExpr, str)):
            raise TypeError(f"{getattr(builder, '__name__', 'the function')}() returned "
                            f"{type(steps).__name__}; return program steps such as `user(...) + assistant(gen(...))`")
        s += steps

    program.__name__ = getattr(builder, "__name__", "program")
    sig = inspect.signature(builder)
    program.__signature__ = sig.replace(parameters=[inspect.Parameter("s", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                                                    *[p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                                                      for p in sig.parameters.values()
                                                      if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]])
    return program
