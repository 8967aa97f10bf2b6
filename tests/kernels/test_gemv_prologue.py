"""The one-row GEMV's prologues (issue 18's decode fusions): the residual add + RMSNorm and SiLU*mul read
inside the projection's load of x must give what the separate kernels followed by the plain GEMV give, bit
for bit (same rounding, same accumulation order), and the norm's sum must come back as the next residual.
On CPU the kernels run through Triton's interpreter; on CUDA at the Llama-3-8B shapes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sgl_jupyter.engine.layers import linear as linear_mod
from sgl_jupyter.engine.layers.linear import ColumnParallelLinear, RowParallelLinear
from sgl_jupyter.kernels import gemv
from sgl_jupyter.kernels.activation import silu_and_mul_triton
from sgl_jupyter.kernels.gemv_configs import GemvConfig
from sgl_jupyter.kernels.rmsnorm import fused_add_rmsnorm_ref, fused_add_rmsnorm_triton

SPLIT = GemvConfig(block_n=8, block_k=64, split_k=3, num_warps=4)


def _inputs(n: int, k: int, device: str, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(device, dtype)
    x = torch.randn(1, k, generator=g).to(device, dtype)
    r = torch.randn(1, k, generator=g).to(device, dtype)
    nw = (1 + 0.1 * torch.randn(k, generator=g)).to(device, dtype)
    return w, x, r, nw


@pytest.mark.parametrize("n,k,config", [(24, 576, None), (7, 200, None), (40, 1000, SPLIT)])
def test_add_rmsnorm_prologue_equals_the_norm_kernel_then_the_gemv(interp_device, n, k, config):
    dtype = torch.bfloat16
    w, x, r, nw = _inputs(n, k, interp_device, dtype, n + k)
    h, s = fused_add_rmsnorm_triton(x, r, nw, 1e-5)
    want = gemv.gemv_triton(h, w, config=config)
    pro = gemv.AddRMSNorm(r, nw, 1e-5)
    got = gemv.gemv_triton(x, w, config=config, prologue=pro)
    assert torch.equal(pro.residual_out, s)  # the next layer's residual, written once
    assert torch.equal(got, want), (got - want).abs().max()
    # and both are the math: against float64 on the reference norm's output
    ref = F.linear(fused_add_rmsnorm_ref(x, r, nw, 1e-5)[0].double(), w.double())
    assert (got.double() - ref).abs().max().item() <= 0.02 * ref.abs().max().item()


@pytest.mark.parametrize("n,k,config", [(24, 96, None), (9, 300, None), (40, 1000, SPLIT)])
def test_silu_mul_prologue_equals_the_activation_kernel_then_the_gemv(interp_device, n, k, config):
    g = torch.Generator().manual_seed(k)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(interp_device, torch.bfloat16)
    gu = (2 * torch.randn(1, 2 * k, generator=g)).to(interp_device, torch.bfloat16)
    want = gemv.gemv_triton(silu_and_mul_triton(gu), w, config=config)
    got = gemv.gemv_triton(gu, w, config=config, prologue=gemv.SiluMul())
    assert torch.equal(got, want), (got - want).abs().max()
    gate, up = gu.double().chunk(2, dim=-1)
    ref = F.linear(F.silu(gate) * up, w.double())
    assert (got.double() - ref).abs().max().item() <= 0.02 * ref.abs().max().item()


def test_prologues_ride_fp8_weights(interp_device):
    from sgl_jupyter.kernels.fp8 import quantize_weight

    w, x, r, nw = _inputs(16, 256, interp_device, torch.bfloat16, 7)
    q, scale = quantize_weight(w)
    h, _ = fused_add_rmsnorm_triton(x, r, nw, 1e-6)
    want = gemv.gemv_triton(h, q, scale=scale)
    got = gemv.gemv_triton(x, q, scale=scale, prologue=gemv.AddRMSNorm(r, nw, 1e-6))
    assert torch.equal(got, want)


def test_layers_run_a_prologue_unfused_where_the_gemv_does_not_multiply():
    """CPU rows (and batches): the prologue is the separate norm / activation, then the layer's matmul."""
    torch.manual_seed(0)
    col, row = ColumnParallelLinear(32, [48], bias=False), RowParallelLinear(24, 32, bias=True)
    for layer in (col, row):
        for p in layer.parameters():
            p.data.normal_()
    x, r, nw = torch.randn(3, 32), torch.randn(3, 32), torch.randn(32)
    pro = gemv.AddRMSNorm(r, nw, 1e-6)
    h, s = fused_add_rmsnorm_ref(x, r, nw, 1e-6)
    assert torch.equal(col(x, pro), F.linear(h, col.weight)) and torch.equal(pro.residual_out, s)
    gu = torch.randn(3, 48)
    assert torch.equal(row(gu, gemv.SiluMul()), F.linear(F.silu(gu[:, :24]) * gu[:, 24:], row.weight, row.bias))


def test_layers_hand_a_prologue_to_the_gemv_where_it_multiplies(interp_device, monkeypatch):
    """Where ``fusable`` holds (one CUDA row; forced here for the interpreter) the layer makes one fused launch."""
    monkeypatch.setattr(gemv, "fusable", lambda x, w: True)
    calls = []
    real = gemv.gemv_triton
    monkeypatch.setattr(linear_mod.gemv, "gemv_triton", lambda *a, **kw: calls.append(kw.get("prologue")) or real(*a, **kw))
    layer = ColumnParallelLinear(64, [40], bias=True).to(interp_device, torch.bfloat16)
    for p in layer.parameters():
        p.data.normal_()
    w, x, r, nw = _inputs(40, 64, interp_device, torch.bfloat16, 3)
    pro = gemv.AddRMSNorm(r, nw, 1e-6)
    y = layer(x, pro)
    h, s = fused_add_rmsnorm_triton(x, r, nw, 1e-6)
    assert calls == [pro] and torch.equal(pro.residual_out, s)
    assert torch.equal(y, real(h, layer.weight, layer.bias))


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(6144, 4096), (28672, 4096), (4096, 14336)])
def test_prologues_at_llama3_8b_shapes_cuda(n, k):
    w, x, r, nw = _inputs(n, k, "cuda", torch.bfloat16, n)
    h, s = fused_add_rmsnorm_triton(x, r, nw, 1e-5)
    pro = gemv.AddRMSNorm(r, nw, 1e-5)
    got = gemv.gemv_triton(x, w, prologue=pro)
    assert torch.equal(pro.residual_out, s)
    # compiled kernels may reduce the row's squares in another order than the norm kernel: one bf16 ulp apart
    torch.testing.assert_close(got, gemv.gemv_triton(h, w), rtol=1.6e-2, atol=1e-2)
    gu = torch.randn(1, 2 * k, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(gemv.gemv_triton(gu, w, prologue=gemv.SiluMul()),
                               gemv.gemv_triton(silu_and_mul_triton(gu), w), rtol=1e-2, atol=1e-2)
    # inside a CUDA graph, as the decode graphs capture it
    out = torch.empty(1, n, device="cuda", dtype=torch.bfloat16)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out.copy_(gemv.gemv_triton(x, w, prologue=gemv.AddRMSNorm(r, nw, 1e-5)))
    graph.replay()
    torch.testing.assert_close(out, got, rtol=0, atol=0)


def test_a_norm_weight_of_another_dtype_takes_the_unfused_path(interp_device, monkeypatch):
    """fp32 norm weight, bf16 rows: the separate kernel promotes the product, the prologue would not: unfused."""
    monkeypatch.setattr(gemv, "fusable", lambda x, w: True)
    real = gemv.gemv_triton
    monkeypatch.setattr(gemv, "gemv_triton", lambda *a, **kw: pytest.fail("fused") if kw.get("prologue")
                        else real(*a, **kw))
    _, x, r, nw = _inputs(40, 64, interp_device, torch.bfloat16, 5)
    assert gemv.AddRMSNorm(r, nw, 1e-6).fits(x) and not gemv.AddRMSNorm(r, nw.float(), 1e-6).fits(x)
    layer = ColumnParallelLinear(64, [40], bias=False).to(interp_device, torch.float32)
    for p in layer.parameters():
        p.data.normal_()
    pro = gemv.AddRMSNorm(r, nw.float(), 1e-6)
    y = layer(x, pro)  # unfused: the norm promotes to float32, the layer multiplies in float32
    alone = gemv.AddRMSNorm(r, nw.float(), 1e-6)
    h = alone.unfused(x)
    assert torch.equal(pro.residual_out, alone.residual_out) and torch.equal(y, F.linear(h, layer.weight))
