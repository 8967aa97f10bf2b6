"""Symbolic runs of a program: arguments are placeholders, generations are recorded, nothing is sent.

`run_batch` uses this to find the constant text every run starts with (few-shot examples, a system
prompt) and prefills it once, so the batch's requests share it through the prefix cache.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Optional

from .chat_template import get_chat_template
from .ir import (SglArgument, SglConstantText, SglExpr, SglExprList, SglGen, SglRoleBegin, SglRoleEnd,
                 SglSelect, SglVariable, SglVarScopeBegin, SglVarScopeEnd)


class StopTracing(Exception):
    """Raised inside a prefix-only trace at the first step whose text is not a constant."""


class TracingScope:
    """The trace in progress on this thread (a nested `@function` call traces instead of running)."""

    _local = threading.local()

    def __init__(self, tracer_state: "TracerProgramState"):
        self.tracer_state = tracer_state
        self.last_scope: Optional[TracingScope] = None

    def __enter__(self) -> "TracingScope":
        self.last_scope = getattr(TracingScope._local, "scope", None)
        TracingScope._local.scope = self
        return self

    def __exit__(self, *exc: Any) -> None:
        TracingScope._local.scope = self.last_scope

    @staticmethod
    def get_current_scope() -> Optional["TracingScope"]:
        return getattr(TracingScope._local, "scope", None)


class TracerProgramState:
    """Stands in for `ProgramState` during a trace; records the expressions appended to it."""

    def __init__(self, backend: Any, arguments: dict, only_trace_prefix: bool):
        self.backend = backend
        self.arguments = arguments
        self.only_trace_prefix = only_trace_prefix
        self.nodes: list[SglExpr] = []
        self.variables: dict[str, Any] = {}
        self.messages_: list[dict] = []
        self.cur_role: Optional[str] = None
        self.chat_template = backend.get_chat_template() if backend is not None else get_chat_template("default")
        self.ret_value: Any = None
        self.stopped_by: Optional[BaseException] = None

    # ------------------------------------------------------------------ the ProgramState surface
    def __iadd__(self, other: Any) -> "TracerProgramState":
        self._execute(other)
        return self

    __add__ = __iadd__

    def __getitem__(self, name: str) -> Any:
        if name in self.variables:
            return self.variables[name]
        if self.arguments.get(name) is not None:
            return self.arguments[name]
        raise KeyError(name)

    def _role(self, role: str, expr: Any = None):
        if expr is not None:
            self._execute(SglExprList([SglRoleBegin(role), expr, SglRoleEnd(role)]))
            return None

        @contextmanager
        def scope():
            self._execute(SglRoleBegin(role))
            yield
            self._execute(SglRoleEnd(role))

        return scope()

    def system(self, expr: Any = None):
        return self._role("system", expr)

    def user(self, expr: Any = None):
        return self._role("user", expr)

    def assistant(self, expr: Any = None):
        return self._role("assistant", expr)

    @contextmanager
    def var_scope(self, name: str):
        self._execute(SglVarScopeBegin(name))
        yield
        self._execute(SglVarScopeEnd(name))

    def fork(self, size: int = 1):
        if self.only_trace_prefix:
            raise StopTracing()
        return [TracerProgramState(self.backend, self.arguments, False) for _ in range(size)]

    def text(self) -> str:
        raise StopTracing()

    # ------------------------------------------------------------------ recording
    def _execute(self, expr: Any) -> None:
        if isinstance(expr, str):
            expr = SglConstantText(expr)
        if isinstance(expr, SglExprList):
            for e in expr.expr_list:
                self._execute(e)
        elif isinstance(expr, SglConstantText):
            self.nodes.append(expr)
        elif isinstance(expr, SglRoleBegin):
            self._role_begin(expr.role)
        elif isinstance(expr, SglRoleEnd):
            _, suffix = self.chat_template.get_prefix_and_suffix(expr.role, self.messages_)
            self.nodes.append(SglConstantText(suffix))
            self.messages_.append({"role": expr.role, "content": ""})
            self.cur_role = None
        elif self.only_trace_prefix:
            raise StopTracing()
        elif isinstance(expr, (SglGen, SglSelect)):
            name = expr.name if expr.name is not None else f"{type(expr).__name__.lower()}_{len(self.variables)}"
            self.variables[name] = SglVariable(name, expr)
            self.nodes.append(expr)
        else:
            self.nodes.append(expr)

    def _role_begin(self, role: str) -> None:
        if not self.messages_ and role != "system" and self.chat_template.default_system_prompt:
            self._role_begin("system")
            self.nodes.append(SglConstantText(self.chat_template.default_system_prompt))
            self._execute(SglRoleEnd("system"))
        self.cur_role = role
        prefix, _ = self.chat_template.get_prefix_and_suffix(role, self.messages_)
        self.nodes.append(SglConstantText(prefix))

    def flatten_nodes(self) -> list[SglExpr]:
        return list(self.nodes)

    def constant_prefix(self) -> str:
        out = ""
        for node in self.nodes:
            if not isinstance(node, SglConstantText):
                break
            out += node.value
        return out


def _placeholders(program: Any, given: dict) -> dict:
    args = {name: SglArgument(name) for name in program.arg_names if name not in given}
    args.update(given)
    args.update(program.bind_arguments)
    return args


def trace_program(program: Any, arguments: dict, backend: Any) -> TracerProgramState:
    """Trace `program` with the given arguments (the others become placeholders). The trace ends early
    where the program needs a real value (a generated string's methods, an argument in an f-string);
    `stopped_by` then holds that exception."""
    tracer = TracerProgramState(backend, _placeholders(program, arguments), only_trace_prefix=False)
    try:
        with TracingScope(tracer):
            tracer.ret_value = program.func(tracer, **tracer.arguments)
    except (StopTracing, TypeError, AttributeError, KeyError) as e:
        tracer.stopped_by = e
    return tracer


def extract_prefix_by_tracing(program: Any, backend: Any) -> str:
    """The constant text every run of `program` starts with ("" if none or if tracing fails)."""
    tracer = TracerProgramState(backend, _placeholders(program, {}), only_trace_prefix=True)
    try:
        with TracingScope(tracer):
            tracer.ret_value = program.func(tracer, **tracer.arguments)
    except Exception:  # StopTracing, or program code that needs real argument values
        pass
    return tracer.constant_prefix()
