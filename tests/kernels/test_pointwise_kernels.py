"""RMSNorm (+residual), RoPE, KV store and KV-index flattening: Triton vs torch references, and the
references vs the engine's own layers (what the model runs on CPU)."""
from __future__ import annotations

import pytest
import torch

from sgl_jupyter.kernels.kv_indices import build_kv_indices, build_kv_indices_ref
from sgl_jupyter.kernels.rmsnorm import (fused_add_rmsnorm_ref, fused_add_rmsnorm_triton, rmsnorm_ref,
                                         rmsnorm_triton)
from sgl_jupyter.kernels.rope import apply_rope_ref, apply_rope_triton
from sgl_jupyter.kernels.store_kv import store_kv_ref, store_kv_triton

from .helpers import make_paged

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """A few rounding steps apart in the output dtype at most (the float32 sums differ in order)."""
    eps = 4 * torch.finfo(out.dtype).eps
    torch.testing.assert_close(out.float(), ref.float(), rtol=eps, atol=eps * ref.float().abs().max().item())


# --- references vs the engine's layers (CPU) ------------------------------------------------------

def test_rmsnorm_reference_matches_engine_layer():
    from sgl_jupyter.engine.layers.rmsnorm import RMSNorm

    layer = RMSNorm(64, eps=1e-5)
    layer.weight.data = torch.randn(64)
    x, r = torch.randn(5, 64), torch.randn(5, 64)
    assert torch.equal(rmsnorm_ref(x, layer.weight, 1e-5), layer(x))
    out, res = fused_add_rmsnorm_ref(x, r, layer.weight, 1e-5)
    eout, eres = layer(x, r)
    assert torch.equal(out, eout) and torch.equal(res, eres)


def test_rope_reference_matches_engine_rotary_with_llama3_scaling():
    from sgl_jupyter.engine.layers.rotary import RotaryEmbedding

    rot = RotaryEmbedding(64, 10000, 500000.0, LLAMA3_SCALING)
    pos = torch.tensor([0, 1, 17, 8191, 9999])
    q, k = torch.randn(5, 4, 64), torch.randn(5, 2, 64)
    eq, ek = rot.prepare(pos, torch.float32).apply(q, k)
    rq, rk = apply_rope_ref(q, k, pos, rot.cos_cache, rot.sin_cache)
    torch.testing.assert_close(rq, eq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rk, ek, rtol=1e-5, atol=1e-5)


# --- Triton, small shapes (CUDA or the interpreter) ------------------------------------------------

@pytest.mark.parametrize("n", [64, 576, 1000])
def test_rmsnorm_small(interp_device, n):
    x = torch.randn(3, n, device=interp_device)
    r = torch.randn(3, n, device=interp_device)
    w = torch.randn(n, device=interp_device)
    _close(rmsnorm_triton(x, w, 1e-6), rmsnorm_ref(x, w, 1e-6))
    out, res = fused_add_rmsnorm_triton(x, r, w, 1e-6)
    rout, rres = fused_add_rmsnorm_ref(x, r, w, 1e-6)
    _close(out, rout)
    assert torch.equal(res, rres)


def test_rope_small_inplace_on_qkv_view(interp_device):
    qkv = torch.randn(6, (4 + 2 + 2) * 32, device=interp_device)
    q, k = qkv[:, :128].view(6, 4, 32), qkv[:, 128:192].view(6, 2, 32)
    pos = torch.tensor([0, 5, 3, 99, 1, 2], device=interp_device)
    ang = torch.randn(100, 16)
    cos = torch.cat([ang.cos()] * 2, -1).to(interp_device)
    sin = torch.cat([ang.sin()] * 2, -1).to(interp_device)
    rq, rk = apply_rope_ref(q, k, pos, cos, sin)
    oq, ok = apply_rope_triton(q, k, pos, cos, sin)
    _close(oq, rq)
    _close(ok, rk)
    v_before = qkv[:, 192:].clone()
    apply_rope_triton(q, k, pos, cos[:, :16].contiguous(), sin[:, :16].contiguous(), inplace=True)  # half-width
    _close(q, rq)
    _close(k, rk)
    assert torch.equal(qkv[:, 192:], v_before)  # v untouched


def test_store_kv_small_casts_into_pool(interp_device):
    k_buf = torch.zeros(20, 2, 32, device=interp_device, dtype=torch.float16)
    v_buf = torch.zeros_like(k_buf)
    kv = torch.randn(5, 2, 2, 32, device=interp_device)
    loc = torch.tensor([3, 19, 7, 1, 11], device=interp_device)
    store_kv_triton(k_buf, v_buf, loc, kv[:, 0], kv[:, 1])  # strided views, float32 -> float16
    rk, rv = torch.zeros_like(k_buf), torch.zeros_like(v_buf)
    store_kv_ref(rk, rv, loc, kv[:, 0], kv[:, 1])
    assert torch.equal(k_buf, rk) and torch.equal(v_buf, rv)


def test_kv_indices_small(interp_device):
    p = make_paged(3, 2, 1, 8, [0, 600, 7], [5, 1, 1], torch.float32, interp_device)
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), p["seq_lens"].cpu().cumsum(0)]).to(interp_device)
    out = torch.full((int(indptr[-1]),), -1, dtype=torch.int32, device=interp_device)
    ref = out.clone()
    build_kv_indices(p["req_to_token"], p["req_pool_indices"], p["seq_lens"], indptr, out)
    build_kv_indices_ref(p["req_to_token"], p["req_pool_indices"], p["seq_lens"], indptr, ref)
    if interp_device == "cpu":  # build_kv_indices dispatches CPU tensors to the reference; run the kernel
        from sgl_jupyter.kernels.kv_indices import _kv_indices_kernel

        out.fill_(-1)
        _kv_indices_kernel[(3,)](p["req_to_token"], p["req_pool_indices"], p["seq_lens"], indptr, out,
                                 p["req_to_token"].stride(0), BLOCK=512)
    assert torch.equal(out, ref) and (out > 0).all()


# --- full shapes on CUDA ---------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("t,n", [(1, 576), (7, 4096), (33, 3584), (300, 8192)])
def test_rmsnorm_cuda(dtype, t, n):
    x = torch.randn(t, n, device="cuda", dtype=dtype)
    r = torch.randn(t, n, device="cuda", dtype=dtype)
    w = (1 + 0.1 * torch.randn(n, device="cuda")).to(dtype)
    _close(rmsnorm_triton(x, w, 1e-5), rmsnorm_ref(x, w, 1e-5))
    out, res = fused_add_rmsnorm_triton(x, r, w, 1e-5)
    rout, rres = fused_add_rmsnorm_ref(x, r, w, 1e-5)
    _close(out, rout)
    assert torch.equal(res, rres)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("hq,hkv,d", [(32, 8, 128), (9, 3, 64), (28, 4, 128)])
def test_rope_cuda_llama3_cache(dtype, hq, hkv, d):
    from sgl_jupyter.engine.layers.rotary import RotaryEmbedding

    rot = RotaryEmbedding(d, 16384, 500000.0, LLAMA3_SCALING).to("cuda")
    T = 257
    pos = torch.randint(0, 16384, (T,), device="cuda")
    q = torch.randn(T, hq, d, device="cuda", dtype=dtype)
    k = torch.randn(T, hkv, d, device="cuda", dtype=dtype)
    oq, ok = apply_rope_triton(q, k, pos, rot.cos_cache, rot.sin_cache)
    rq, rk = apply_rope_ref(q, k, pos, rot.cos_cache, rot.sin_cache)
    _close(oq, rq)
    _close(ok, rk)


@pytest.mark.gpu
@pytest.mark.parametrize("pool_dtype", [torch.bfloat16, torch.float32])
def test_store_kv_cuda(pool_dtype):
    k_buf = torch.randn(10000, 8, 128, device="cuda").to(pool_dtype)
    v_buf = torch.randn_like(k_buf)
    rk, rv = k_buf.clone(), v_buf.clone()
    loc = torch.randperm(9999, device="cuda")[:777] + 1
    k = torch.randn(777, 8, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(777, 8, 128, device="cuda", dtype=torch.bfloat16)
    store_kv_triton(k_buf, v_buf, loc, k, v)
    store_kv_ref(rk, rv, loc, k, v)
    assert torch.equal(k_buf, rk) and torch.equal(v_buf, rv)


@pytest.mark.parametrize("n", [64, 1536, 1000])
def test_silu_and_mul_triton_matches_reference(interp_device, n):
    from sgl_jupyter.kernels.activation import silu_and_mul_ref, silu_and_mul_triton

    x = torch.randn(5, 2 * n, device=interp_device)
    torch.testing.assert_close(silu_and_mul_triton(x), silu_and_mul_ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_silu_and_mul_cuda(dtype):
    from sgl_jupyter.kernels.activation import silu_and_mul_ref, silu_and_mul_triton

    x = torch.randn(33, 2 * 14336, device="cuda", dtype=dtype)
    _close(silu_and_mul_triton(x), silu_and_mul_ref(x))


def test_rope_inplace_on_fused_qkv_view_matches_reference(interp_device):
    """The engine rotates q and k where they lie in the qkv projection output, in one launch."""
    from sgl_jupyter.kernels.rope import rope_inplace

    T, hq, hkv, d = 5, 4, 2, 64
    qkv = torch.randn(T, (hq + 2 * hkv) * d, device=interp_device)
    pos = torch.tensor([0, 3, 17, 100, 511], device=interp_device)
    cos = torch.randn(512, d, device=interp_device)
    sin = torch.randn(512, d, device=interp_device)
    q = qkv[:, :hq * d].reshape(T, hq, d).clone()
    k = qkv[:, hq * d:(hq + hkv) * d].reshape(T, hkv, d).clone()
    v = qkv[:, (hq + hkv) * d:].clone()
    rq, rk = apply_rope_ref(q, k, pos, cos, sin)
    rope_inplace(qkv[:, :(hq + hkv) * d].view(T, -1, d), pos, cos, sin)
    torch.testing.assert_close(qkv[:, :hq * d].reshape(T, hq, d), rq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(qkv[:, hq * d:(hq + hkv) * d].reshape(T, hkv, d), rk, rtol=1e-5, atol=1e-5)
    assert torch.equal(qkv[:, (hq + hkv) * d:], v)
