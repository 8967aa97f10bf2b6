"""FP8 kernels against torch references: the weight quantizer, the one-row GEMV reading e4m3 weights (split-K
or not), the few-row W8A16 matmul, per-token activation quantization and the FP8 tensor-core matmul (CUDA)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sgl_jupyter.kernels import fp8, gemv
from sgl_jupyter.kernels.gemv_configs import GemvConfig

from .helpers import rel_err


def _weights(n: int, k: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g) * 4  # rows of different ranges
    q, s = fp8.quantize_weight(w.to(device))
    return w.to(device), q, s


def _act_dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if device == "cuda" else torch.float32  # the interpreter has no bf16 matmul


def test_quantize_weight_round_trip_is_within_e4m3_precision():
    w = torch.randn(37, 300) * torch.logspace(-3, 2, 37)[:, None]
    w[5] = 0  # an all-zero row keeps a finite scale
    q, s = fp8.quantize_weight(w, rows_per_chunk=8)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (37,) and torch.isfinite(s).all()
    back = fp8.dequantize_weight(q, s, torch.float32)
    # e4m3 keeps 3 mantissa bits: relative rounding <= 2^-4 of each element's magnitude (normal range)
    big = w.abs() > w.abs().amax(1, keepdim=True) / 64
    assert ((back - w).abs()[big] <= w.abs()[big] / 16 + 1e-12).all()
    assert back[5].abs().max() == 0
    assert (q.float().abs().amax(1)[w.abs().amax(1) > 0] == fp8.FP8_MAX).all()  # each row uses the full range


@pytest.mark.parametrize("n,k,split", [(24, 200, 1), (7, 2100, 4), (40, 64, 2)])
def test_fp8_gemv_matches_dequantized_reference(interp_device, n, k, split):
    w, q, s = _weights(n, k, interp_device, seed=n + k)
    x = torch.randn(1, k).to(interp_device, _act_dtype(interp_device))
    b = torch.randn(n).to(interp_device, x.dtype) if split != 2 else None
    cfg = GemvConfig(block_n=8, block_k=64, split_k=split, num_warps=4)
    y = gemv.gemv_triton(x, q, b, scale=s, config=cfg)
    ref = gemv.gemv_ref(x.float(), q, None if b is None else b.float(), scale=s)
    assert y.dtype == x.dtype and rel_err(y, ref) < (1e-2 if x.dtype == torch.bfloat16 else 1e-5)
    # and the quantized product stays near the dense one (the accuracy the scheme buys)
    assert rel_err(y, F.linear(x.float(), w, None if b is None else b.float())) < 0.08


def test_fp8_gemv_refuses_weights_without_scale(interp_device):
    _, q, _ = _weights(8, 32, interp_device)
    with pytest.raises(AssertionError, match="scale"):
        gemv.gemv_triton(torch.randn(1, 32, device=interp_device), q)


@pytest.mark.parametrize("m,n,k,bias", [(3, 40, 96, True), (17, 70, 130, False), (40, 24, 64, True)])
def test_w8a16_matmul_matches_dequantized_reference(interp_device, m, n, k, bias):
    _, q, s = _weights(n, k, interp_device, seed=m)
    x = torch.randn(m, k).to(interp_device, _act_dtype(interp_device))
    b = torch.randn(n).to(interp_device, x.dtype) if bias else None
    y = fp8.w8a16_matmul(x, q, s, b, block_n=32, block_k=32)
    ref = F.linear(x.float(), fp8.dequantize_weight(q, s, torch.float32), None if b is None else b.float())
    assert y.shape == (m, n) and rel_err(y, ref) < (1e-2 if x.dtype == torch.bfloat16 else 1e-5)


def test_quantize_rows_matches_reference(interp_device):
    x = torch.randn(5, 300) * torch.tensor([1e-3, 1.0, 50.0, 0.0, 7.0])[:, None]
    x = x.to(interp_device)
    q, s = fp8.quantize_rows(x)
    q_ref, s_ref = fp8.quantize_rows_ref(x)
    torch.testing.assert_close(s, s_ref, rtol=1e-6, atol=0)
    q, q_ref = q.float(), q_ref.float()
    if interp_device == "cpu":
        # Triton's interpreter drops the carry when e4m3 rounding crosses a power of two (126.4 -> 64, not
        # 128); the GPU converts in hardware. Everywhere else the two must agree exactly.
        carry = (q_ref.abs().log2().frac() == 0) & (q == q_ref / 2)
        q = torch.where(carry, q_ref, q)
    assert (q - q_ref).abs().max().item() == 0
    assert s[3].item() == pytest.approx(fp8.MIN_SCALE) and (q[3] == 0).all()  # an all-zero row


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336)])
def test_fp8_gemv_llama3_8b_shapes_cuda(n, k):
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    q, s = fp8.quantize_weight(w)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    y = gemv.gemv_triton(x, q, scale=s)  # the table's tiling for this GPU (split-K for the small shapes)
    assert rel_err(y, gemv.gemv_ref(x.float(), q, scale=s)) < 1e-2
    out, graph = torch.empty_like(y), torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        out.copy_(gemv.gemv_triton(x, q, scale=s))
    x.copy_(torch.randn_like(x))
    graph.replay()
    assert rel_err(out, gemv.gemv_ref(x.float(), q, scale=s)) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("m", [2, 8, 33])
def test_w8a16_matmul_cuda(m):
    w = torch.randn(6144, 4096, device="cuda", dtype=torch.bfloat16)
    q, s = fp8.quantize_weight(w)
    x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
    ref = F.linear(x.float(), fp8.dequantize_weight(q, s, torch.float32))
    assert rel_err(fp8.w8a16_matmul(x, q, s), ref) < 1e-2


@pytest.mark.gpu
def test_scaled_matmul_cuda_is_close_to_bf16():
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("rowwise-scaled FP8 matmul needs Hopper")
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    q, s = fp8.quantize_weight(w)
    x = torch.randn(300, 4096, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    y = fp8.scaled_matmul(x, q, s, b)
    assert y.dtype == torch.bfloat16 and y.shape == (300, 4096)
    assert rel_err(y, F.linear(x.float(), w.float(), b.float())) < 0.06
