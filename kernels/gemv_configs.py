"""Tile choice of the one-row GEMV (``kernels/gemv.py``) per GPU and weight shape.

Why a table: the best tiling of a bandwidth-bound GEMV depends on the chip (multiprocessor count, HBM
speed) and on the shape. A 4096x4096 ``o_proj`` has too few rows to keep 132 multiprocessors' loads in
flight with whole rows per program, so it is split along K (partial sums reduced by a second tiny kernel);
a 28672-row ``gate_up_proj`` is not. ``MEASURED`` holds what ``scripts/gpu_gemv_tune.py`` found fastest on a
GPU (it prints the entries to paste here); shapes or GPUs not in it get ``heuristic()``, which splits K
until there are enough programs per multiprocessor.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class GemvConfig:
    block_n: int = 8  # rows of W per program
    block_k: int = 1024  # K elements per load (one row's bytes per load: block_k * weight element size)
    split_k: int = 1  # programs per row block along K (>1: fp32 partials + a reduce launch)
    num_warps: int = 8
    num_stages: Optional[int] = None  # Triton's software pipelining depth (None: Triton's default)
    prefetch: bool = False  # load the next K tile before using this one (Triton does not pipeline these loads)

    def launch_options(self) -> dict:
        opts = {"num_warps": self.num_warps}
        if self.num_stages is not None:
            opts["num_stages"] = self.num_stages
        return opts


# GPU name fragment -> {(N, K, weight element bytes): config}. Entries come from scripts/gpu_gemv_tune.py on
# that GPU (never hand-picked); the H100 default (8 rows, K tile 1024, 8 warps, no split) was measured there in
# session 3 (scripts/gpu_experiments.py) for every Llama-3-8B shape.
MEASURED: dict[str, dict[tuple[int, int, int], GemvConfig]] = {
    "H100": {},
    "H200": {},
}

# GPU name fragment -> {(N, K, weight element bytes)} where scripts/gpu_gemv_tune.py measured the decode prologue
# (norm or SiLU*mul in the GEMV's load of x) slower than its own kernel before the GEMV: those shapes keep the
# separate kernel. Each program of a norm prologue reads the whole row from L2 first, which a shape with many
# programs may not repay; unmeasured shapes fuse.
PROLOGUE_SLOWER: dict[str, set[tuple[int, int, int]]] = {
    "H100": set(),
    "H200": set(),
}

PROGRAMS_PER_SM = 4  # heuristic target: enough row blocks x K splits in flight to cover HBM latency


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    sm_count: int


@functools.lru_cache(maxsize=16)
def device_info(index: Optional[int]) -> DeviceInfo:
    """Name and multiprocessor count of a CUDA device (``None``: not CUDA, e.g. the Triton interpreter)."""
    if index is None or not torch.cuda.is_available():
        return DeviceInfo("cpu", 4)
    props = torch.cuda.get_device_properties(index)
    return DeviceInfo(props.name, props.multi_processor_count)


def heuristic(n: int, k: int, elem_bytes: int, sm_count: int) -> GemvConfig:
    """Whole rows per program, 1024 elements of each row per load (bf16: 2 KiB; fp8: 1 KiB, since a 2048-wide
    fp8 tile takes 176 registers a thread at 8 warps, one program per multiprocessor, against 80: ptxas -v for
    sm_90); split K in powers of two while the programs are fewer than ``PROGRAMS_PER_SM`` per multiprocessor
    and each split keeps at least two loads per row."""
    del elem_bytes  # the register tile is in elements, whatever the weight's width
    block_n, block_k = 8, 1024
    block_k = min(block_k, max(16, 1 << (max(k, 1) - 1).bit_length()))
    programs, split = -(-n // block_n), 1
    while programs * split < PROGRAMS_PER_SM * sm_count and k // (2 * split) >= 2 * block_k:
        split *= 2
    return GemvConfig(block_n=block_n, block_k=block_k, split_k=split)


def lookup(name: str, n: int, k: int, elem_bytes: int) -> Optional[GemvConfig]:
    for fragment, table in MEASURED.items():
        if fragment in name and (n, k, elem_bytes) in table:
            return table[(n, k, elem_bytes)]
    return None


@functools.lru_cache(maxsize=1024)
def config_for(n: int, k: int, elem_bytes: int, device_index: Optional[int]) -> GemvConfig:
    """The measured entry for this GPU and shape, else the heuristic (cached: called on every launch)."""
    info = device_info(device_index)
    return lookup(info.name, n, k, elem_bytes) or heuristic(n, k, elem_bytes, info.sm_count)


@functools.lru_cache(maxsize=1024)
def prologue_pays(n: int, k: int, elem_bytes: int, device_index: Optional[int]) -> bool:
    """Whether this GPU runs a prologue inside the (N, K) GEMV (not measured slower there)."""
    name = device_info(device_index).name
    return not any(fragment in name and (n, k, elem_bytes) in shapes for fragment, shapes in PROLOGUE_SLOWER.items())
