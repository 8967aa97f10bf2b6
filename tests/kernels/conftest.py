"""Kernel tests run twice over: on CUDA at full shapes (``gpu`` tests), and on CPU through
Triton's interpreter at small shapes, so a CPU-only checkout still executes every kernel's logic.
The interpreter is chosen by TRITON_INTERPRET=1, set in tests/conftest.py before Triton is first imported."""
from __future__ import annotations

import pytest
import torch

from sgl_jupyter.kernels._triton import HAS_TRITON

CUDA = torch.cuda.is_available()


@pytest.fixture
def interp_device() -> str:
    """Device for the small-shape tests: CUDA when present, else CPU through the Triton interpreter."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed: only the torch references can run here")
    return "cuda" if CUDA else "cpu"
