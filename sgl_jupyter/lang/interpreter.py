"""The `StreamExecutor`: runs one program state's steps, in order, against a backend.

Each state has a worker thread that executes appended expressions in order against the backend, so a
program's Python code runs ahead while the model works and forks decode in parallel. Reading a variable
(`s["x"]`) waits for it. An error in a step is raised to the program at its next append or read, and by
`run()`, with a note naming the program line that appended the failing step.
"""
from __future__ import annotations

import contextvars
import linecache
import logging
import operator
import os
import queue
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Optional

from .ir import (SglCommitLazy, SglConcateAndAppend, SglConstantText, SglExprList, SglGen, SglRoleBegin,
                 SglRoleEnd, SglSamplingParams, SglSelect, SglVarScopeBegin, SglVarScopeEnd)

logger = logging.getLogger(__name__)
_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


class ProgramAborted(RuntimeError):
    """The program's requests were aborted (Ctrl-C, `state.abort()`, or the engine aborted one)."""


_listeners: contextvars.ContextVar[tuple] = contextvars.ContextVar("sgl_program_listeners", default=())


@contextmanager
def program_listener(callback: Callable[[dict], None]):
    """Call `callback(event)` for what every program started inside the block does (its forks too).

    Events are dicts with "event" in gen_start / gen_chunk / gen_end / select / error, plus "sid" (the
    state), "name", "delta" (new text), "text" (the variable so far), "meta_info", "error". They run on
    the program's worker thread: keep the callback quick. Streaming runs give one gen_chunk per chunk;
    other runs one gen_chunk per gen with its whole text.
    """
    token = _listeners.set(_listeners.get() + (callback,))
    try:
        yield
    finally:
        _listeners.reset(token)


_POLL_S = 0.1


def wait_event(event: threading.Event, timeout: Optional[float] = None) -> bool:
    """event.wait() in short waits so KeyboardInterrupt is not held off until the event fires."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not event.wait(_POLL_S):
        if deadline is not None and time.monotonic() >= deadline:
            return False
    return True


def _user_site() -> Optional[str]:
    """`file:line: code` of the innermost caller outside this package (the program line being run)."""
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PKG_DIR):
        frame = frame.f_back
    if frame is None:
        return None
    code = frame.f_code
    line = linecache.getline(code.co_filename, frame.f_lineno).strip()
    return f'File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}: {line}'


def _noted(error: BaseException, site: Optional[str]) -> BaseException:
    """Attach the failing program line to the exception (once), for tracebacks and for the notebook."""
    if site and not getattr(error, "sgl_line", None):
        try:
            error.sgl_line = site  # type: ignore[attr-defined]
        except AttributeError:
            pass
        if hasattr(error, "add_note"):
            error.add_note(f"in the SGLang program step appended at {site}")
    return error


class StreamExecutor:
    """Executes one program state's expressions, in order, on a worker thread."""

    def __init__(self, backend: Any, arguments: dict, default_sampling_para: SglSamplingParams,
                 chat_template: Any = None, stream: bool = False, use_thread: bool = True):
        self.sid = uuid.uuid4().hex
        self.backend = backend
        self.arguments = arguments
        self.default_sampling_para = default_sampling_para
        self.stream = stream
        self.variables: dict[Any, Any] = {}
        self.variable_event: dict[Any, threading.Event] = {}
        self.meta_info: dict[Any, Any] = {}
        self.text_ = ""
        self.messages_: list[dict] = []
        self.chat_template = chat_template or backend.get_chat_template()
        self.cur_role: Optional[str] = None
        self.cur_role_begin_pos: Optional[int] = None
        self.fork_start_text_pos: Optional[int] = None
        self.error_: Optional[BaseException] = None
        self.error_site: Optional[str] = None
        self.is_finished = False
        self.aborted = False
        self.children: list[StreamExecutor] = []
        self._rids: set[str] = set()
        self._rid_lock = threading.Lock()
        self._ended = False
        self.listeners: tuple = _listeners.get()
        self.stream_text_event = threading.Event() if stream else None
        self.stream_var_event: Optional[dict[Any, threading.Event]] = {} if stream else None
        self.use_thread = use_thread
        if use_thread:
            self.queue: queue.Queue = queue.Queue()
            self._start_worker()

    def _start_worker(self) -> None:
        self.worker = threading.Thread(target=contextvars.copy_context().run, args=(self._worker,),
                                       daemon=True, name=f"sgl-program-{self.sid[:8]}")
        self.worker.start()

    # ------------------------------------------------------------------ appending and waiting
    def submit(self, expr: Any) -> None:
        self.raise_error()
        if self._ended and self.use_thread:  # appending to a finished program (e.g. a later notebook cell)
            self.worker.join()
            self._ended = False
            self.is_finished = False
            self._start_worker()
        site = _user_site()
        self._init_var_event(expr)
        if self.use_thread:
            self.queue.put((expr, site))
        else:
            try:
                self._execute(expr)
            except BaseException as e:
                self._fail(e, site)
                raise _noted(e, site)

    def _join(self) -> None:
        """queue.join() in short waits, so Ctrl-C (SIGINT) reaches a main thread waiting here."""
        q = self.queue
        with q.all_tasks_done:
            while q.unfinished_tasks:
                q.all_tasks_done.wait(_POLL_S)

    def sync(self) -> None:
        """Wait until every appended step ran; raise the first error."""
        if self.use_thread:
            self._join()
        self.raise_error()

    def raise_error(self) -> None:
        if self.error_ is not None:
            raise _noted(self.error_, self.error_site)

    def get_var(self, name: Any) -> Any:
        event = self.variable_event.get(name)
        if event is not None:
            wait_event(event)
        elif name not in self.variables and self.use_thread:
            self._join()  # unknown so far: let pending steps finish before saying it does not exist
        if name in self.variables:
            return self.variables[name]
        self.raise_error()
        raise KeyError(f"the program has no variable {name!r}; it has {sorted(map(str, self.variables))}. "
                       "Name a generation with gen('name') / select('name', ...)")

    def set_var(self, name: Any, value: Any) -> None:
        self.variables[name] = value

    def get_meta_info(self, name: Any, timeout: Optional[float] = None) -> Any:
        event = self.variable_event.get(name)
        if event is not None and not wait_event(event, timeout):
            raise TimeoutError(f"timed out waiting for {name!r}")
        return self.meta_info.get(name)

    def text(self) -> str:
        if self.use_thread:
            self._join()
        return self.text_

    def messages(self) -> list[dict]:
        if self.use_thread:
            self._join()
        return self.messages_

    def error(self) -> Optional[BaseException]:
        if self.use_thread:
            self._join()
        return self.error_

    def fork(self, size: int = 1) -> list["StreamExecutor"]:
        try:
            size = operator.index(size)
        except TypeError:
            size = 0
        if size < 1:
            raise ValueError("fork(size) needs an integer >= 1")
        if size > 1:
            self.submit(SglCommitLazy())  # prefill the shared prefix once; the forks then hit the cache
        self.sync()
        children = []
        for _ in range(size):
            exe = StreamExecutor(self.backend, self.arguments, self.default_sampling_para, self.chat_template,
                                 self.stream)
            exe.variables = dict(self.variables)
            exe.text_ = self.text_
            exe.messages_ = list(self.messages_)
            exe.cur_role = self.cur_role
            exe.cur_role_begin_pos = self.cur_role_begin_pos
            exe.fork_start_text_pos = len(self.text_)
            exe.listeners = self.listeners
            children.append(exe)
        self.children.extend(children)
        return children

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self.use_thread:
            self.queue.put(None)
        self.backend.end_program(self)

    # ------------------------------------------------------------------ abort
    def new_rid(self) -> str:
        if self.aborted:
            raise ProgramAborted("the program was aborted")
        rid = uuid.uuid4().hex
        with self._rid_lock:
            self._rids.add(rid)
        return rid

    def done_rid(self, rid: str) -> None:
        with self._rid_lock:
            self._rids.discard(rid)

    def abort(self) -> None:
        """Abort this state's requests in flight (and its forks'); steps not yet run are skipped."""
        self.aborted = True
        with self._rid_lock:
            rids = list(self._rids)
        for rid in rids:
            self.backend.abort(rid)
        for child in self.children:
            child.abort()

    # ------------------------------------------------------------------ the worker
    def _worker(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    break
                if self.error_ is None:
                    expr, site = item
                    try:
                        if self.aborted:
                            raise ProgramAborted("the program was aborted")
                        self._execute(expr)
                    except BaseException as e:  # recorded; raised to the program at its next step
                        self._fail(e, site)
                if self.stream_text_event is not None:
                    self.stream_text_event.set()
            finally:
                self.queue.task_done()
        self.is_finished = True
        self._wake_all()

    def _fail(self, error: BaseException, site: Optional[str]) -> None:
        if self.error_ is None:
            self.error_ = error
            self.error_site = site
            self._emit("error", error=error, text=site)
        self._wake_all()

    def _emit(self, event: str, name: Any = None, **fields: Any) -> None:
        for callback in self.listeners:
            try:
                callback({"event": event, "sid": self.sid, "name": name, **fields})
            except Exception:  # a broken display must not break the program
                logger.exception("program listener failed")

    def _wake_all(self) -> None:
        for event in list(self.variable_event.values()):
            event.set()
        if self.stream_var_event is not None:
            for event in list(self.stream_var_event.values()):
                event.set()
        if self.stream_text_event is not None:
            self.stream_text_event.set()

    def _init_var_event(self, expr: Any) -> None:
        if isinstance(expr, (SglGen, SglSelect, SglVarScopeBegin)):
            self.variable_event[expr.name] = threading.Event()
            if self.stream_var_event is not None:
                self.stream_var_event[expr.name] = threading.Event()
        elif isinstance(expr, SglExprList):
            for e in expr.expr_list:
                self._init_var_event(e)

    # ------------------------------------------------------------------ executing one expression
    def _execute(self, expr: Any) -> None:
        if isinstance(expr, str):
            expr = SglConstantText(expr)
        if isinstance(expr, SglConstantText):
            self.text_ += expr.value
        elif isinstance(expr, SglExprList):
            for e in expr.expr_list:
                self._execute(e)
        elif isinstance(expr, SglGen):
            self._execute_gen(expr)
        elif isinstance(expr, SglSelect):
            self._execute_select(expr)
        elif isinstance(expr, SglRoleBegin):
            self._execute_role_begin(expr.role)
        elif isinstance(expr, SglRoleEnd):
            self._execute_role_end(expr.role)
        elif isinstance(expr, SglVarScopeBegin):
            self.variables[expr.name] = len(self.text_)
        elif isinstance(expr, SglVarScopeEnd):
            self.variables[expr.name] = self.text_[self.variables[expr.name]:]
            self.variable_event[expr.name].set()
        elif isinstance(expr, SglCommitLazy):
            self.backend.commit_lazy_operations(self)
        elif isinstance(expr, SglConcateAndAppend):
            self._execute_concatenate_and_append(expr)
        else:
            raise TypeError(f"cannot execute {expr!r} in a program")

    def _execute_gen(self, expr: SglGen) -> None:
        params = self._resolve_sampling_params(expr.sampling_params)
        name = expr.name
        self._emit("gen_start", name)
        if not self.stream:
            comp, meta = self.backend.generate(self, params)
            self._check_finish(meta)
            text = comp[0] if isinstance(comp, list) else comp
            self.text_ += text
            self.variables[name] = comp
            self.meta_info[name] = meta
            self._emit("gen_chunk", name, delta=text, text=text, meta_info=meta)
            self.variable_event[name].set()
            self._emit("gen_end", name, text=text, meta_info=meta)
            return
        self.variables[name] = ""
        self.stream_var_event[name].set()
        meta = None
        for delta, meta in self.backend.generate_stream(self, params):
            self.text_ += delta
            self.variables[name] += delta
            self.meta_info[name] = meta
            self._emit("gen_chunk", name, delta=delta, text=self.variables[name], meta_info=meta)
            self.stream_var_event[name].set()
            self.stream_text_event.set()
        if meta is not None:
            self._check_finish(meta)
        self.variable_event[name].set()
        self.stream_var_event[name].set()
        self._emit("gen_end", name, text=self.variables[name], meta_info=meta)

    def _check_finish(self, meta: Any) -> None:
        metas = meta if isinstance(meta, list) else [meta]
        for m in metas:
            reason = (m or {}).get("finish_reason") or {}
            if isinstance(reason, dict) and reason.get("type") == "abort":
                if self.aborted:
                    raise ProgramAborted("the program was aborted")
                raise RuntimeError(f"the backend aborted the generation: {reason.get('message', reason)}")

    def _execute_select(self, expr: SglSelect) -> None:
        decision = self.backend.select(self, expr.choices, expr.temperature, expr.choices_method)
        self._emit("select", expr.name, text=decision.decision, meta_info=decision.meta_info)
        if expr.name is not None:
            self.variables[expr.name] = decision.decision
            self.meta_info[expr.name] = decision.meta_info
            self.variable_event[expr.name].set()
            if self.stream_var_event is not None:
                self.stream_var_event[expr.name].set()
        self.text_ += decision.decision

    def _execute_role_begin(self, role: str) -> None:
        if self.cur_role is not None:
            raise ValueError(f"nested roles are not allowed: {role}() inside {self.cur_role}()")
        if not self.messages_ and role != "system":
            default_system = self.chat_template.default_system_prompt
            if default_system:
                self._execute_role_begin("system")
                self.text_ += default_system
                self._execute_role_end("system")
        self.cur_role = role
        prefix, _ = self.chat_template.get_prefix_and_suffix(role, self.messages_)
        self.text_ += prefix
        self.cur_role_begin_pos = len(self.text_)

    def _execute_role_end(self, role: str) -> None:
        if self.cur_role != role:
            raise ValueError(f"{role}_end() without a matching {role}_begin()"
                             + (f" (inside {self.cur_role}())" if self.cur_role else ""))
        content = self.text_[self.cur_role_begin_pos:].lstrip()
        _, suffix = self.chat_template.get_prefix_and_suffix(role, self.messages_)
        self.text_ += suffix
        self.messages_.append({"role": role, "content": content})
        self.cur_role = None

    def _execute_concatenate_and_append(self, expr: SglConcateAndAppend) -> None:
        added = ""
        for state in expr.states:
            exe = state.stream_executor
            exe.sync()
            added += exe.text_[exe.fork_start_text_pos:]
        self.text_ += added

    def _resolve_sampling_params(self, override: SglSamplingParams) -> SglSamplingParams:
        params = self.default_sampling_para.merged(override)
        if self.chat_template.stop_str:
            stop = [params.stop] if isinstance(params.stop, str) else list(params.stop or [])
            params.stop = stop + [s for s in self.chat_template.stop_str if s not in stop]
        return params

    def __del__(self) -> None:
        try:
            self.end()
        except Exception:
            pass
