"""`ProgramState`, the `s` a program appends to, and `ProgramStateGroup`, what `s.fork(n)` returns."""
from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from .interpreter import StreamExecutor, wait_event
from .ir import SglConcateAndAppend, SglExpr, SglExprList, SglRoleBegin, SglRoleEnd, SglVarScopeBegin, SglVarScopeEnd


class _Text(str):
    """The state's text. Also callable: `s.text()` (SGLang) and `s.text` (the seed article) both work."""

    def __call__(self) -> str:
        return str(self)


class ProgramState:
    """The state `s` of a running program: append with `s += ...`, read with `s["name"]`, `s.text()`."""

    def __init__(self, stream_executor: StreamExecutor):
        self.stream_executor = stream_executor
        self.ret_value: Any = None

    # ------------------------------------------------------------------ roles and scopes
    def _role(self, role: str, expr: Any = None):
        if expr is not None:
            block = SglExprList([SglRoleBegin(role), _to_expr(expr), SglRoleEnd(role)])
            self.stream_executor.submit(block)
            return block

        @contextmanager
        def scope():
            self.stream_executor.submit(SglRoleBegin(role))
            yield
            self.stream_executor.submit(SglRoleEnd(role))

        return scope()

    def system(self, expr: Any = None):
        return self._role("system", expr)

    def user(self, expr: Any = None):
        return self._role("user", expr)

    def assistant(self, expr: Any = None):
        return self._role("assistant", expr)

    @contextmanager
    def var_scope(self, name: str):
        """`with s.var_scope("x"): ...` stores the text appended inside as `s["x"]`."""
        self.stream_executor.submit(SglVarScopeBegin(name))
        yield
        self.stream_executor.submit(SglVarScopeEnd(name))

    # ------------------------------------------------------------------ fork / join
    def fork(self, size: int = 1, position_ids_offset: Any = None) -> "ProgramStateGroup":
        """`size` copies of this state that continue independently (and concurrently).
        (`position_ids_offset` is accepted for SGLang compatibility and ignored.)"""
        return ProgramStateGroup([ProgramState(e) for e in self.stream_executor.fork(size)], self)

    @contextmanager
    def copy(self):
        group = self.fork(1)
        try:
            yield group[0]
        finally:
            group.join()

    # ------------------------------------------------------------------ reading
    @property
    def text(self) -> _Text:
        return _Text(self.stream_executor.text())

    def messages(self) -> list[dict]:
        return self.stream_executor.messages()

    def sync(self) -> None:
        self.stream_executor.sync()

    def error(self) -> Optional[BaseException]:
        return self.stream_executor.error()

    def abort(self) -> None:
        self.stream_executor.abort()

    def get_var(self, name: Any) -> Any:
        return self.stream_executor.get_var(name)

    def set_var(self, name: Any, value: Any) -> None:
        self.stream_executor.set_var(name, value)

    def get_meta_info(self, name: Any) -> Any:
        return self.stream_executor.get_meta_info(name)

    def text_iter(self, var_name: Any = None) -> Iterator[str]:
        """Yield text as it arrives (`run(stream=True)`): the whole program's, or one variable's."""
        exe = self.stream_executor
        if not exe.stream:
            yield self.text() if var_name is None else self.get_var(var_name)
            return
        seen = 0
        if var_name is None:
            while True:
                wait_event(exe.stream_text_event)
                exe.stream_text_event.clear()
                finished = exe.is_finished
                out = exe.text_[seen:]
                seen += len(out)
                if out:
                    yield out
                if finished:
                    break
        else:
            event = self._wait_stream_var(var_name)
            if event is None:
                return
            while True:
                wait_event(event)
                event.clear()
                done = exe.variable_event[var_name].is_set()
                out = str(exe.variables.get(var_name, ""))[seen:]
                seen += len(out)
                if out:
                    yield out
                if done:
                    break
        exe.raise_error()

    def _wait_stream_var(self, var_name: Any) -> Optional[threading.Event]:
        exe = self.stream_executor
        while True:
            event = exe.stream_var_event.get(var_name)
            if event is not None:
                return event
            if exe.is_finished:
                exe.raise_error()
                return None
            time.sleep(0.02)  # the program thread has not appended this gen yet

    async def text_async_iter(self, var_name: Any = None, return_meta_data: bool = False):
        """Async version of `text_iter` (with `return_meta_data`, yields (text, meta_info))."""
        loop = asyncio.get_running_loop()
        it = self.text_iter(var_name)
        done = object()
        while True:
            out = await loop.run_in_executor(None, next, it, done)
            if out is done:
                return
            if return_meta_data:
                yield out, self.stream_executor.meta_info.get(var_name)
            else:
                yield out

    # ------------------------------------------------------------------ operators
    def __iadd__(self, other: Any) -> "ProgramState":
        if other is None:
            raise ValueError("tried to append None to the program state")
        self.stream_executor.submit(_to_expr(other))
        return self

    def __add__(self, other: Any) -> "ProgramState":
        """`s + expr` appends, like `s += expr`, and returns the state (SGLang returns the same object)."""
        return self.__iadd__(other)

    def __radd__(self, other: Any):
        raise TypeError("put the program state on the left: `s += text`, not `text + s`")

    def __getitem__(self, name: Any) -> Any:
        return self.get_var(name)

    def __setitem__(self, name: Any, value: Any) -> None:
        self.set_var(name, value)

    def __contains__(self, item: Any) -> bool:
        """A variable name (SGLang) or a substring of the text (so `"x" in s + gen()` reads naturally)."""
        if item in self.stream_executor.variables:
            return True
        return isinstance(item, str) and item in self.text()

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return f"ProgramState({self.text()!r})"

    def __del__(self) -> None:
        try:
            self.stream_executor.end()
        except Exception:
            pass


def _to_expr(value: Any) -> Any:
    if isinstance(value, (SglExpr, str)):
        return value
    if isinstance(value, ProgramState):
        raise TypeError("cannot append a program state to another; append its text: `s += other.text()`")
    raise TypeError(f"cannot append {type(value).__name__} to a program: use str(...) for values, "
                    "or gen()/select()/user()/... for program steps")


class ProgramStateGroup:
    """The states made by `s.fork(n)`: index them, append to all (`forks += ...`), then `join()`."""

    def __init__(self, states: list[ProgramState], src_state: Optional[ProgramState] = None):
        self.states = states
        self.src_state = src_state

    def join(self, mode: str = "gather_variable") -> None:
        """gather_variable: the parent gets each new variable as a list over forks.
        concate_and_append: the parent's text gets each fork's added text, in order."""
        if mode == "gather_variable":
            parent = self.src_state.stream_executor.variables
            known = set(parent)
            for state in self.states:
                state.stream_executor.sync()
                for key, value in state.stream_executor.variables.items():
                    if key not in known:
                        parent.setdefault(key, []).append(value)
        elif mode == "concate_and_append":
            self.src_state += SglConcateAndAppend(self.states)
            self.src_state.stream_executor.sync()
        else:
            raise ValueError(f"join mode must be 'gather_variable' or 'concate_and_append', got {mode!r}")
        for state in self.states:
            state.stream_executor.end()

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __setitem__(self, i: int, value: ProgramState) -> None:
        if self.states[i] is not value:
            raise TypeError("fork items cannot be replaced; append to them with `forks[i] += ...`")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self):
        return iter(self.states)

    def __iadd__(self, other: Any) -> "ProgramStateGroup":
        if isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"got {len(other)} items for {len(self.states)} forks")
            for state, item in zip(self.states, other):
                state += item
        elif callable(other) and not isinstance(other, SglExpr):
            for i, state in enumerate(self.states):
                state += other(i)
        else:
            for state in self.states:
                state += other
        return self


# ---------------------------------------------------------------------------------------------- running
