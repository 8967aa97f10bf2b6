"""The decode fusions' one switch: the GEMV prologues (residual add + RMSNorm and SiLU*mul read inside the
next projection's GEMV) and RoPE + KV store in one kernel. ``SGL_DECODE_FUSIONS=0`` starts without them;
``decode_fusions(on)`` sets them for the engines built inside (a decode CUDA graph keeps whichever kernels
ran when it was captured), which is how ``bench latency --peers unfused`` measures both in one run."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

ON = os.environ.get("SGL_DECODE_FUSIONS", "1") != "0"


@contextlib.contextmanager
def decode_fusions(on: bool) -> Iterator[None]:
    global ON
    saved, ON = ON, on
    try:
        yield
    finally:
        ON = saved
