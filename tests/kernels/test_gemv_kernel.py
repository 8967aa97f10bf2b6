"""The one-row decode GEMV against float64 math, and its dispatch rule (only one-row half-precision CUDA
inputs take it; everything else is F.linear)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sgl_jupyter.kernels import gemv
from sgl_jupyter.kernels.gemv_configs import GemvConfig, heuristic


def _check(x, w, b, y):
    exact = F.linear(x.double(), w.double(), None if b is None else b.double())
    # the float32 sum differs from float64 by far less than one rounding of the output dtype
    bound = 2 * torch.finfo(y.dtype).eps * (x.double().abs() @ w.double().abs().t()).max().item() + 1e-6
    assert (y.double() - exact).abs().max().item() <= bound


@pytest.mark.parametrize("n,k,bias", [(24, 40, False), (7, 2100, True), (33, 1024, False)])
def test_gemv_ragged_shapes(interp_device, n, k, bias):
    g = torch.Generator().manual_seed(n * k)
    dtype = torch.float16 if interp_device == "cuda" else torch.float32
    w = torch.randn(n, k, generator=g).to(interp_device, dtype)
    x = torch.randn(1, k, generator=g).to(interp_device, dtype)
    b = torch.randn(n, generator=g).to(interp_device, dtype) if bias else None
    _check(x, w, b, gemv.gemv_triton(x, w, b))


def test_gemv_reads_a_row_slice_of_a_wider_weight(interp_device):
    w = torch.randn(16, 96, device=interp_device)[:, 32:80]  # row stride 96, K 48
    x = torch.randn(1, 48, device=interp_device)
    _check(x, w, None, gemv.gemv_triton(x, w))


@pytest.mark.parametrize("split", [2, 3, 8])
def test_gemv_split_k_partials_sum_to_the_product(interp_device, split):
    g = torch.Generator().manual_seed(split)
    w = torch.randn(20, 1000, generator=g).to(interp_device)
    x = torch.randn(1, 1000, generator=g).to(interp_device)
    b = torch.randn(20, generator=g).to(interp_device)
    _check(x, w, b, gemv.gemv_triton(x, w, b, config=GemvConfig(block_n=8, block_k=64, split_k=split, num_warps=4)))


def test_tile_heuristic_splits_k_only_where_rows_are_few():
    sms = 132  # H100 / H200
    o_proj, gate_up = heuristic(4096, 4096, 2, sms), heuristic(28672, 4096, 2, sms)
    assert o_proj.split_k > 1 and gate_up.split_k == 1
    assert -(-4096 // o_proj.block_n) * o_proj.split_k >= 4 * sms
    assert heuristic(4096, 4096, 1, sms) == o_proj  # fp8: the same tile in elements (registers), half the bytes
    assert heuristic(8, 40, 2, sms).block_k == 64  # never wider than the (power-of-two) row


def test_linear_dispatch_keeps_f_linear_off_cuda_and_for_batches():
    w, x = torch.randn(8, 16), torch.randn(3, 16)
    assert torch.equal(gemv.linear(x, w), F.linear(x, w))
    assert torch.equal(gemv.linear(x[:1], w), F.linear(x[:1], w))  # CPU: the reference, bit for bit


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336), (128256, 4096)])
def test_gemv_llama3_8b_shapes_cuda(n, k):
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, device="cuda", dtype=torch.bfloat16) if n == 6144 else None
    y = gemv.linear(x, w, b)
    assert y.shape == (1, n) and y.dtype == torch.bfloat16
    _check(x, w, b, y)
    # inside a CUDA graph (the decode graphs capture it)
    out = torch.empty_like(y)
    graph = torch.cuda.CUDAGraph()
    gemv.linear(x, w, b)
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        out.copy_(gemv.linear(x, w, b))
    x.copy_(torch.randn_like(x))
    graph.replay()
    _check(x, w, b, out)


def test_prologue_table_keeps_measured_slower_shapes_unfused(monkeypatch):
    from sgl_jupyter.kernels import gemv_configs as gc

    monkeypatch.setattr(gc, "device_info", lambda index: gc.DeviceInfo("NVIDIA H200", 132))
    monkeypatch.setitem(gc.PROLOGUE_SLOWER, "H200", {(28672, 4096, 2)})
    gc.prologue_pays.cache_clear()
    try:
        assert not gc.prologue_pays(28672, 4096, 2, 0)
        assert gc.prologue_pays(28672, 4096, 1, 0) and gc.prologue_pays(6144, 4096, 2, 0)  # fp8 / other shapes
    finally:
        gc.prologue_pays.cache_clear()


@pytest.mark.parametrize("split,prologue", [(1, None), (3, None), (2, "norm"), (1, "silu")])
def test_prefetching_the_next_tile_changes_nothing_but_the_schedule(interp_device, split, prologue):
    """``prefetch`` loads tile k+1 before using tile k: the same sums in the same order, bit for bit, including
    the last split's short tail and the prologues."""
    g = torch.Generator().manual_seed(split)
    n, k = 20, 1000
    w = torch.randn(n, k, generator=g).to(interp_device, torch.bfloat16)
    b = torch.randn(n, generator=g).to(interp_device, torch.bfloat16)
    x = torch.randn(1, 2 * k if prologue == "silu" else k, generator=g).to(interp_device, torch.bfloat16)
    r, nw = torch.randn(1, k, generator=g).to(x), torch.randn(k, generator=g).to(x)

    def run(prefetch: bool):
        pro = {None: None, "silu": gemv.SiluMul(), "norm": gemv.AddRMSNorm(r, nw, 1e-6)}[prologue]
        cfg = GemvConfig(block_n=8, block_k=64, split_k=split, num_warps=4, prefetch=prefetch)
        return gemv.gemv_triton(x, w, b, config=cfg, prologue=pro)

    want = run(False)
    assert torch.equal(run(True), want)
    if prologue is None:
        _check(x, w, b, want)
