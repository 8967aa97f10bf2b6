"""Fixtures for the Jupyter tests: one real IPython shell with the extension loaded and the embedded model
loaded by ``%sgl_load`` (once per test session; reloaded only if a test unloaded it)."""
from __future__ import annotations

import threading
import time

import pytest

LOAD_LINE = "--max-total-tokens 8192 --device cpu"


def ext_name() -> str:
    """`sgl_jupyter` once the package delegates to `sgl_jupyter.jupyter` (the lead adds it), else the module."""
    import sgl_jupyter

    return "sgl_jupyter" if hasattr(sgl_jupyter, "load_ipython_extension") else "sgl_jupyter.jupyter"


@pytest.fixture(scope="session")
def shell():
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    from sgl_jupyter.jupyter import get_session

    ip = start_ipython() or get_ipython()  # None from start_ipython once another test package started it
    yield ip
    if get_session(ip) is not None:  # shut the engine down; other test packages get the DSL default back
        ip.run_line_magic("unload_ext", ext_name())


def ensure_loaded(ip):
    """The extension loaded and an engine in the session (`%sgl_load` on the embedded model)."""
    from sgl_jupyter.jupyter import get_session

    if get_session(ip) is None:
        ip.run_line_magic("load_ext", ext_name())
    session = get_session(ip)
    if session.engine is None:
        result = ip.run_cell(f"%sgl_load {LOAD_LINE}")
        result.raise_error()
    return session


@pytest.fixture
def ip(shell):
    """The shell, with the extension and an engine loaded; SGL config restored after each test."""
    session = ensure_loaded(shell)
    saved = {name: getattr(session.config, name) for name in session.config.trait_names()
             if session.config.traits()[name].metadata.get("config")}
    yield shell
    for name, value in saved.items():
        setattr(session.config, name, value)


@pytest.fixture
def session(ip):
    from sgl_jupyter.jupyter import get_session

    return get_session(ip)


@pytest.fixture
def kernel_engine(session):
    return session.engine


class EventLog:
    """Every engine event while subscribed (the engine's own numbers to compare widgets with)."""

    def __init__(self, engine):
        self.events: list = []
        self._lock = threading.Lock()
        self._unsubscribe = engine.subscribe(self._on)

    def _on(self, event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, name: str) -> list:
        with self._lock:
            return [e for e in self.events if type(e).__name__ == name]

    def close(self) -> None:
        self._unsubscribe()


@pytest.fixture
def event_log(kernel_engine):
    log = EventLog(kernel_engine)
    yield log
    log.close()


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def run_ok(ip, source: str):
    """Run a cell and fail the test with the cell's own error if it raised."""
    result = ip.run_cell(source)
    if not result.success:
        err = result.error_in_exec or result.error_before_exec
        render = getattr(err, "_render_traceback_", None)
        detail = "\n".join(render()) if render else repr(err)
        pytest.fail(f"cell failed:\n{source}\n---\n{detail}")
    return result
