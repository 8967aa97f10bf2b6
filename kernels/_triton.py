"""Optional Triton: the kernels import on machines without it (CPU CI), and jit happens at first
launch, so ``TRITON_INTERPRET=1`` set by a test before that first launch runs them on CPU."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only install: references still work
    triton = None
    tl = SimpleNamespace(constexpr=Any)  # kernel signatures still evaluate their annotations
    HAS_TRITON = False


class LazyKernel:
    """``@jit`` stand-in for ``@triton.jit`` that defers the decoration (and Triton's choice between
    compiling and interpreting) to the first ``kernel[grid](...)``."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self._kernel = None

    def __getitem__(self, grid):
        if self._kernel is None:
            require_triton()
            self._kernel = triton.jit(self.fn)
        return self._kernel[grid]


def jit(fn: Callable) -> LazyKernel:
    return LazyKernel(fn)


def require_triton() -> None:
    if not HAS_TRITON:
        raise RuntimeError("Triton kernels need the `triton` package (pip install 'sgl_jupyter[gpu]'); "
                           "on CPU use the torch references or --attention-backend torch")


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def use_triton(t) -> bool:
    """Dispatch rule of the public entry points: Triton for CUDA tensors, the torch reference otherwise."""
    return HAS_TRITON and t.is_cuda
