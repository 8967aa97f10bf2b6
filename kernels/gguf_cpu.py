"""ctypes front of ``gguf_cpu.c``: packed GGUF rows (Q4_0/Q4_1/Q8_0) times int8-quantized activations, and the
fused Llama decode step. The C file ships as package data and is compiled once per machine (gcc -O3
-march=native -fopenmp) into the user cache; the library name carries a hash of the source and of the compiler
flags, so an edited kernel or another CPU never loads a stale build."""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import torch

SOURCE = Path(__file__).with_name("gguf_cpu.c")
FLAGS = ["-O3", "-g", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
TYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 8}  # GGML type ids the kernel takes
BLOCK_BYTES = {2: 18, 3: 20, 8: 34}
INTERLEAVED = 256  # type flag: rows stored 8 side by side per block (``interleave``), the fast layout

_LIB: Optional[ctypes.CDLL] = None


def compiler() -> Optional[str]:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def _cache_dir() -> Path:
    from sgl_jupyter.engine.default_model import cache_root

    return cache_root() / "kernels"


def _cpu_id() -> str:
    """The CPU's feature flags (what -march=native compiles for)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def library_path() -> Path:
    cc = compiler() or "cc"
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *FLAGS, platform.machine(), _cpu_id()]).encode())
    return _cache_dir() / f"gguf_cpu-{key.hexdigest()[:16]}.so"


def build() -> Path:
    """Compile once (under a file lock, into a temporary file renamed into place); return the library path."""
    from filelock import FileLock

    out = library_path()
    if out.is_file():
        return out
    cc = compiler()
    if cc is None:
        raise RuntimeError("quantization='gguf' compiles a small C kernel and found no C compiler: install gcc "
                           "(apt-get install gcc) or leave quantization unset (fp32 dequantized weights)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if out.is_file():
            return out
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            proc = subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"compiling {SOURCE.name} with {cc} failed (needs OpenMP: gcc with libgomp):\n"
                                   f"{proc.stderr[-2000:]}")
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return out


class Layer(ctypes.Structure):
    _fields_ = [("type_qkv", ctypes.c_int), ("type_o", ctypes.c_int), ("type_gu", ctypes.c_int),
                ("type_down", ctypes.c_int), ("qkv", ctypes.c_void_p), ("o", ctypes.c_void_p),
                ("gate_up", ctypes.c_void_p), ("down", ctypes.c_void_p), ("in_norm", ctypes.c_void_p),
                ("post_norm", ctypes.c_void_p), ("k_cache", ctypes.c_void_p), ("v_cache", ctypes.c_void_p)]


class Model(ctypes.Structure):
    _fields_ = [("n_layers", ctypes.c_int), ("hidden", ctypes.c_int), ("n_heads", ctypes.c_int),
                ("n_kv_heads", ctypes.c_int), ("head_dim", ctypes.c_int), ("inter", ctypes.c_int),
                ("eps", ctypes.c_float), ("scale", ctypes.c_float), ("layers", ctypes.POINTER(Layer)),
                ("final_norm", ctypes.c_void_p)]


def lib() -> ctypes.CDLL:
    """The compiled kernel (built on first use). Load torch first so the library shares torch's libgomp."""
    global _LIB
    if _LIB is None:
        so = ctypes.CDLL(str(build()))
        p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
        so.gguf_linear.argtypes = [i, p, i, i, p, i, p, i]
        so.gguf_linear.restype = None
        so.gguf_interleave8.argtypes = [i, p, i, i, p]
        so.gguf_interleave8.restype = None
        so.gguf_interleaved_bytes.argtypes = [i, i, i]
        so.gguf_interleaved_bytes.restype = ctypes.c_size_t
        so.gguf_dequantize.argtypes = [i, p, i, i, p]
        so.gguf_dequantize.restype = None
        so.gguf_decode.argtypes = [ctypes.POINTER(Model), p, i, p, p, p, i, p, p, p, p, p, i]
        so.gguf_decode.restype = None
        _LIB = so
    return _LIB


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def linear(type_id: int, packed: torch.Tensor, n: int, k: int, x: torch.Tensor, threads: int = 0) -> torch.Tensor:
    """``x [M, k] fp32 @ W.T`` for packed ``W`` (``n`` rows of ``k // 32`` blocks) -> ``[M, n]`` fp32."""
    x = x.contiguous()
    if x.dtype != torch.float32:
        x = x.float()
    m = x.shape[0]
    y = torch.empty(m, n, dtype=torch.float32)
    if m:
        lib().gguf_linear(type_id, _ptr(packed), n, k, _ptr(x), m, _ptr(y), threads)
    return y


def dequantize(type_id: int, packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    out = torch.empty(n, k, dtype=torch.float32)
    lib().gguf_dequantize(type_id, _ptr(packed), n, k, _ptr(out))
    return out


def interleave(type_id: int, packed: torch.Tensor, n: int, k: int) -> tuple[int, torch.Tensor]:
    """GGUF rows -> the 8-row interleaved layout (same bytes, reordered; ``n % 8 == 0``), with its type id."""
    if n % 8:
        return type_id, packed
    so = lib()
    out = torch.empty(so.gguf_interleaved_bytes(type_id, n, k), dtype=torch.uint8)
    so.gguf_interleave8(type_id, _ptr(packed.contiguous()), n, k, _ptr(out))
    return type_id | INTERLEAVED, out
