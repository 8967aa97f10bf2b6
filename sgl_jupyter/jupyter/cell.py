"""Running a ``%%sgl`` cell: its body is the body of an SGLang program with `s` bound.

The body runs at module level in the user namespace (names it assigns stay defined, as in any cell),
with `s` a fresh `ProgramState` on the kernel's backend. A top-level ``return`` ends the program (so a
pasted function body works), ``from sglang import ...`` means this package's DSL (so pasted SGLang code
works), and a cell that only defines functions, classes and constants simply defines them.

Errors show the failing cell line and the error message, not the engine's traceback (IPython renders
an exception's `_render_traceback_`). Ctrl-C aborts the program's requests and waits until the engine has
let them go, so the next cell starts on a clean engine.
"""
from __future__ import annotations

import ast
import contextlib
import itertools
import linecache
import re
import time
from dataclasses import dataclass
from typing import Any, Optional

from IPython.core.error import UsageError

_RETURN = "__sgl_cell_return__"
_counter = itertools.count(1)
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom, ast.Pass)


@dataclass
class CellOptions:
    out: str = "_sgl"
    stream: bool = True
    temperature: Optional[float] = None
    max_tokens: Optional[int] = None
    program: Optional[str] = None
    seed: Optional[int] = None
    logprobs: bool = False
    widget: bool = True  # with stream: show the live TokenStream (False: stream headless)


class _CellReturn(Exception):
    def __init__(self, value: Any = None):
        super().__init__()
        self.value = value


# ---------------------------------------------------------------------------------------------- errors
class SglCellError(Exception):
    """A %%sgl program failed. Rendered as the failing cell line plus the error message."""

    def __init__(self, error: BaseException, line: Optional[int], cell_lines: list[str], line_offset: int):
        self.error = error
        self.line = line  # 1-based line of the body; shown counting the %%sgl line
        self.cell_lines = cell_lines
        self.line_offset = line_offset
        super().__init__(self._message())

    def _message(self) -> str:
        where = f" at line {self.line + self.line_offset} of the %%sgl cell" if self.line else ""
        return f"{type(self.error).__name__}{where}: {_describe(self.error)}"

    def _context(self) -> list[str]:
        if not self.line:
            return []
        out = []
        for n in range(max(1, self.line - 2), min(len(self.cell_lines), self.line + 2) + 1):
            mark = "---->" if n == self.line else "     "
            out.append(f"{mark} {n + self.line_offset:3d}   {self.cell_lines[n - 1].rstrip()}")
        return out

    def _render_traceback_(self) -> list[str]:
        where = f" at line {self.line + self.line_offset} of the %%sgl cell" if self.line else " in the %%sgl cell"
        return [f"SGLang program error{where}:"] + self._context() + [
            f"{type(self.error).__name__}: {_describe(self.error)}"]


class SglCellInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a %%sgl cell; its requests were aborted."""

    def _render_traceback_(self) -> list[str]:
        return [f"KeyboardInterrupt: {self}"]


def _describe(error: BaseException) -> str:
    text = str(error) or repr(error)
    if isinstance(error, SyntaxError) and error.msg:  # str() adds "(<%%sgl cell 1>, line 2)": a second line number
        text = error.msg
    notes = [n for n in getattr(error, "__notes__", []) or [] if not n.startswith("in the SGLang program step")]
    return "\n".join([text] + notes)


def _site_line(site: Optional[str], filename: str) -> Optional[int]:
    m = re.match(r'File "(.*)", line (\d+)', site or "")
    return int(m.group(2)) if m and m.group(1) == filename else None


def _traceback_line(error: BaseException, filename: str) -> Optional[int]:
    line, tb = None, error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# ---------------------------------------------------------------------------------------------- source rewriting
class _TopLevelReturns(ast.NodeTransformer):
    """`return x` outside any def/class -> `raise __sgl_cell_return__(x)`."""

    def visit_FunctionDef(self, node):
        return node

    visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = visit_FunctionDef

    def visit_Return(self, node: ast.Return):
        value = node.value if node.value is not None else ast.Constant(None)
        raise_ = ast.Raise(exc=ast.Call(func=ast.Name(_RETURN, ast.Load()), args=[value], keywords=[]), cause=None)
        return ast.copy_location(raise_, node)


def rewrite_sglang_imports(tree: ast.AST) -> None:
    """`from sglang import gen` / `import sglang as sgl` -> this package's DSL (`sgl_jupyter.lang`)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "sglang" and not node.level:
            node.module = "sgl_jupyter.lang"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "sglang":
                    alias.asname = alias.asname or "sglang"
                    alias.name = "sgl_jupyter.lang"


def is_definitions_only(tree: ast.Module) -> bool:
    """Only defs, classes, imports and call-free assignments: nothing to run, nothing to stream."""
    for stmt in tree.body:
        if isinstance(stmt, _DEFINITIONS):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None and not any(
                isinstance(n, (ast.Call, ast.Await, ast.Subscript, ast.Attribute)) for n in ast.walk(stmt.value)):
            continue
        return False
    return True


# ---------------------------------------------------------------------------------------------- waiting
def _wait_steps(exe: Any) -> None:
    """Wait until the program's worker ran every step. Polls, so Ctrl-C (even `interrupt_main`) gets in."""
    q = exe.queue
    with q.all_tasks_done:
        while q.unfinished_tasks:
            q.all_tasks_done.wait(0.05)


def _executors(exe: Any) -> list:
    out, todo = [], [exe]
    while todo:
        e = todo.pop()
        out.append(e)
        todo.extend(getattr(e, "children", []))
    return out


def abort_program(exe: Any, timeout: float = 15.0) -> bool:
    """Abort every request of the program (forks included) and wait until their workers stopped, so the
    engine has released them. Aborts again while waiting: a request submitted just after the first abort
    (its id was taken, the engine had not seen it yet) is caught by the next. A second Ctrl-C does not cut
    this short (it would leave requests running); the wait is bounded by `timeout`. True if all stopped."""
    deadline = time.monotonic() + timeout
    next_abort = 0.0
    while True:
        try:
            executors = _executors(exe)
            now = time.monotonic()
            if now >= next_abort:
                for e in executors:
                    e.abort()
                    with contextlib.suppress(Exception):
                        e.end()
                next_abort = now + 0.5
            alive = [e.worker for e in executors if getattr(e, "worker", None) is not None and e.worker.is_alive()]
            if not alive:
                return True
            if now >= deadline:
                return False
            alive[0].join(0.05)
        except KeyboardInterrupt:
            continue


# ---------------------------------------------------------------------------------------------- the cell
class SglCell:
    """One execution of a %%sgl cell."""

    def __init__(self, shell: Any, session: Any, body: str, options: CellOptions, line_offset: int = 1):
        self.shell, self.session, self.body, self.opts = shell, session, body, options
        self.line_offset = line_offset
        self.filename = f"<%%sgl cell {next(_counter)}>"
        self.lines = body.splitlines()
        linecache.cache[self.filename] = (len(body), None, body.splitlines(True), self.filename)
        self.widget: Any = None
        self.feed: Any = None
        self.state: Any = None

    # ------------------------------------------------------------------ compile
    def _parse(self) -> ast.Module:
        try:
            tree = ast.parse(self.body, self.filename)
        except SyntaxError as e:
            raise SglCellError(e, e.lineno, self.lines, self.line_offset) from None
        rewrite_sglang_imports(tree)
        return tree

    def _error(self, error: BaseException, exe: Any = None) -> SglCellError:
        site = getattr(error, "sgl_line", None)
        if site is None and exe is not None and getattr(exe, "error_", None) is error:
            site = exe.error_site
        line = _site_line(site, self.filename) or _traceback_line(error, self.filename)
        return SglCellError(error, line, self.lines, self.line_offset)

    # ------------------------------------------------------------------ run
    def run(self) -> Any:
        tree = self._parse()
        ns = self.shell.user_ns
        if not tree.body:
            raise UsageError("the %%sgl cell is empty: write the program body (with `s` bound), e.g. "
                             "s += 'Q: ' + gen('answer', max_tokens=32)")
        if self.opts.program is None and is_definitions_only(tree):
            exec(compile(tree, self.filename, "exec"), ns)  # noqa: S102 - the user's own cell
            return None
        backend = self.session.backend
        runner = self._program_runner(tree, ns) if self.opts.program else self._module_runner(tree, ns)
        return self._execute(backend, runner, ns)

    def _module_runner(self, tree: ast.Module, ns: dict):
        tree = ast.fix_missing_locations(_TopLevelReturns().visit(tree))
        code = compile(tree, self.filename, "exec")

        def run(state: Any) -> Any:
            saved = {k: ns[k] for k in ("s", _RETURN) if k in ns}
            ns["s"], ns[_RETURN] = state, _CellReturn
            try:
                exec(code, ns)  # noqa: S102 - the user's own cell
                return None
            except _CellReturn as r:
                return r.value
            finally:
                for k in ("s", _RETURN):
                    if k in saved:
                        ns[k] = saved[k]
                    else:
                        ns.pop(k, None)

        return run

    def _program_runner(self, tree: ast.Module, ns: dict):
        from sgl_jupyter.lang import function

        name = self.opts.program
        wrapper = ast.parse(f"def {name}(s):\n    pass")
        wrapper.body[0].body = tree.body
        code = compile(ast.fix_missing_locations(wrapper), self.filename, "exec")
        exec(code, ns)  # noqa: S102 - defines the program in the user namespace
        program = ns[name] = function(ns[name])
        return lambda state: program.func(state)

    def _execute(self, backend: Any, runner: Any, ns: dict) -> Any:
        from sgl_jupyter.lang import ProgramState, program_listener
        from sgl_jupyter.lang.interpreter import StreamExecutor
        from sgl_jupyter.lang.ir import default_sampling_params

        from .feeds import latency_fields

        cfg, opts = self.session.config, self.opts
        on_engine = self.session.engine is not None
        defaults = default_sampling_params(
            max_new_tokens=opts.max_tokens if opts.max_tokens is not None else cfg.max_tokens,
            temperature=opts.temperature if opts.temperature is not None else cfg.temperature,
            seed=opts.seed if opts.seed is not None else cfg.seed,
            return_logprob=True if (on_engine and opts.logprobs) else None)
        if opts.stream and opts.widget:
            self._start_widget()
        listen = program_listener(self.feed.on_program_event) if self.feed is not None else contextlib.nullcontext()
        exe = None
        try:
            with listen:
                exe = StreamExecutor(backend, {}, defaults, None, opts.stream)
                self.state = ProgramState(exe)
                backend.begin_program(exe)
                value = runner(self.state)
                exe.end()
                _wait_steps(exe)
                exe.raise_error()
        except KeyboardInterrupt:
            clean = abort_program(exe) if exe is not None else True
            with contextlib.suppress(KeyboardInterrupt):
                self._finish("interrupted", "interrupted (Ctrl-C): the program's requests were aborted")
            raise SglCellInterrupted(
                "the %%sgl cell was interrupted; its requests were aborted" + (
                    " and the engine is ready for the next cell" if clean else
                    ", but a request is still finishing in the engine")) from None
        except Exception as e:  # noqa: BLE001 - shown as the failing program line
            if exe is not None:
                abort_program(exe)
            err = self._error(e, exe)
            self._finish("error", err._message())
            raise err from None
        except BaseException:  # SystemExit and the like: stop the requests, let IPython handle the rest
            if exe is not None:
                abort_program(exe)
            self._finish("error", "stopped")
            raise
        self._finish("done")
        result = value if isinstance(value, ProgramState) else self.state
        ns[opts.out] = result
        for meta in exe.meta_info.values():
            for m in meta if isinstance(meta, list) else [meta]:
                fields = latency_fields(m)
                if fields:
                    self.session.history.append(fields)
        self._show_result(result)
        return result

    # ------------------------------------------------------------------ display
    def _has_kernel(self) -> bool:
        return getattr(self.shell, "kernel", None) is not None

    def _start_widget(self) -> None:
        from IPython.display import display

        from .feeds import TokenStreamFeed
        from .widgets import TokenStream

        cfg = self.session.config
        self.widget = TokenStream(show_logprobs=cfg.show_logprobs or self.opts.logprobs)
        self.feed = TokenStreamFeed(self.widget, self.session.pump, self.session.tap, rate=cfg.widget_rate,
                                    max_tokens=cfg.max_stream_tokens)
        self.session.last_stream = self.widget
        self._handle = display(self.widget, display_id=True) if self._has_kernel() else None

    def _finish(self, status: str, error: str = "") -> None:
        if self.feed is not None:
            self.feed.finish(status, error)
            if getattr(self, "_handle", None) is not None:
                self._handle.update(self.widget)  # refresh the static fallback saved with the notebook

    def _show_result(self, result: Any) -> None:
        from IPython.display import display

        from .cards import FinalText

        text = result.text()
        if text:
            display(FinalText(text))
