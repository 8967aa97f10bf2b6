"""The engine's CUDA kernels (GEMV and its prologues, fp8, RoPE + KV store, attention, the sampler) compiled for the GPU they run on
(sm_90: H100/H200) on this CPU machine, down to a cubin with the ptxas in Triton's wheel: a kernel the
interpreter runs but the compiler rejects fails here rather than in a scarce GPU call. A subprocess without
TRITON_INTERPRET: under it Triton builds its own library as interpreted functions, which cannot compile."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sgl_jupyter.kernels._triton import HAS_TRITON

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "triton_sm90_check.py"


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_decode_kernels_compile_for_sm90(tmp_path):
    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("no ptxas in this triton install")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compiled now, not found in a cache
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    done = out.stdout.strip().splitlines()[-1].split()  # "compiled N of N kernels for sm_90"
    assert done[1] == done[3] and int(done[1]) >= 20, out.stdout
