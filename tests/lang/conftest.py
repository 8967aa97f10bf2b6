"""Fixtures for the DSL tests: programs run on the session's shared engine (tests/conftest.py)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def lang_backend(engine):
    """The in-process backend over the shared engine (the embedded SmolLM2-135M-Instruct on CPU)."""
    from sgl_jupyter.lang import EngineBackend

    return EngineBackend(engine)


@pytest.fixture
def sgl_backend(lang_backend):
    """Make the engine the default backend for one test, and restore the previous default after it."""
    from sgl_jupyter.lang import get_default_backend, set_default_backend

    previous = get_default_backend()
    set_default_backend(lang_backend)
    yield lang_backend
    set_default_backend(previous)
