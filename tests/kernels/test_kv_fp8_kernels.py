"""fp8 (e4m3) KV cache kernels: the store kernel quantizes with the layer's scale and saturates, the decode
and extend kernels read fp8 pools with the scales as their float32 references do (Triton interpreter on CPU,
CUDA when present), and the engine's torch backend agrees with both."""
from __future__ import annotations

import pytest
import torch

from sgl_jupyter.kernels.decode_attention import decode_attention_ref, decode_attention_triton
from sgl_jupyter.kernels.extend_attention import extend_attention_ref, extend_attention_triton
from sgl_jupyter.kernels.store_kv import store_kv_ref, store_kv_triton

from .helpers import make_paged, rel_err

FP8 = torch.float8_e4m3fn
E4M3_HALF_ULP = 2.0 ** -4  # 3 mantissa bits: rounding moves a normal value by at most 1/16 of itself
E4M3_SUBNORMAL_HALF_STEP = 2.0 ** -10  # smallest subnormal is 2^-9


def _assert_e4m3_round_trip(stored: torch.Tensor, x: torch.Tensor, scale: float) -> None:
    """``stored * scale`` is ``x`` (saturated to +-448 * scale) within one e4m3 rounding, and never NaN."""
    back = stored.float() * scale
    want = x.float().clamp(-448 * scale, 448 * scale)
    assert not back.isnan().any()
    bound = E4M3_HALF_ULP * want.abs() + E4M3_SUBNORMAL_HALF_STEP * scale
    assert ((back - want).abs() <= bound * 1.0001).all(), (back - want).abs().max()


def _fp8_paged(p: dict, k_scale: float, v_scale: float) -> dict:
    """The same pool quantized to e4m3 with the given scales (through the reference store)."""
    q = dict(p)
    q["k_buffer"] = torch.zeros(p["k_buffer"].shape, dtype=FP8, device=p["k_buffer"].device)
    q["v_buffer"] = torch.zeros_like(q["k_buffer"])
    every = torch.arange(p["k_buffer"].shape[0], device=p["k_buffer"].device)
    store_kv_ref(q["k_buffer"], q["v_buffer"], every, p["k_buffer"], p["v_buffer"], k_scale, v_scale)
    return q


@pytest.mark.parametrize("scale", [1.0, 0.03])
def test_store_kv_fp8_round_trips_and_saturates(interp_device, scale):
    g = torch.Generator().manual_seed(1)
    kv = torch.randn(6, 2, 3, 32, generator=g) * 4 * scale
    kv[0, 0, 0, :4] = torch.tensor([1e6, -1e6, 449 * scale, -5000 * scale])  # beyond 448 * scale: saturate
    kv[1, 1, 2, :2] = torch.tensor([1e-7, -3e-4]) * scale  # subnormal / underflow
    kv = kv.to(interp_device)
    loc = torch.tensor([4, 1, 9, 2, 7, 12], device=interp_device)
    k_buf = torch.zeros(14, 3, 32, dtype=FP8, device=interp_device)
    v_buf = torch.zeros_like(k_buf)
    store_kv_triton(k_buf, v_buf, loc, kv[:, 0], kv[:, 1], scale, 2 * scale)  # strided views of a packed kv
    rk, rv = torch.zeros_like(k_buf), torch.zeros_like(v_buf)
    store_kv_ref(rk, rv, loc, kv[:, 0], kv[:, 1], scale, 2 * scale)
    for buf in (k_buf, v_buf, rk, rv):
        assert buf.dtype == FP8
    _assert_e4m3_round_trip(k_buf[loc], kv[:, 0], scale)
    _assert_e4m3_round_trip(v_buf[loc], kv[:, 1], 2 * scale)
    _assert_e4m3_round_trip(rk[loc], kv[:, 0], scale)
    assert k_buf[4, 0, 0].float().item() == 448.0 and k_buf[4, 0, 1].float().item() == -448.0
    assert k_buf[4, 0, 2].float().item() == 448.0 and k_buf[4, 0, 3].float().item() == -448.0
    # the same float32 arithmetic and round-half-even: bit-identical to the reference
    assert torch.equal(k_buf.view(torch.uint8), rk.view(torch.uint8))
    assert torch.equal(v_buf.view(torch.uint8), rv.view(torch.uint8))
    untouched = torch.ones(14, dtype=torch.bool)
    untouched[loc.cpu()] = False
    assert (k_buf[untouched.to(interp_device)].float() == 0).all()


def test_reference_store_saturates_infinities_and_large_values():
    buf, vb = torch.zeros(2, 1, 4, dtype=FP8), torch.zeros(2, 1, 4, dtype=FP8)
    k = torch.tensor([500.0, float("inf"), 1e9, 449.0]).view(1, 1, 4)
    store_kv_ref(buf, vb, torch.tensor([1]), k, -k, 1.0, 1.0)
    assert (buf[1].float() == 448).all() and (vb[1].float() == -448).all()


@pytest.mark.parametrize("hq,hkv,d", [(9, 3, 64), (8, 2, 32)])
@pytest.mark.parametrize("splits", [1, 3])
def test_decode_fp8_matches_reference(interp_device, hq, hkv, d, splits):
    seq = [1, 70, 129]
    p = make_paged(3, hq, hkv, d, [n - 1 for n in seq], [1] * 3, torch.float32, interp_device, seed=splits)
    ks, vs = 0.02, 0.05
    f = _fp8_paged(p, ks, vs)
    q = torch.randn(3, hq, d, device=interp_device)
    args = (q, f["k_buffer"], f["v_buffer"], f["req_to_token"], f["req_pool_indices"], f["seq_lens"], d ** -0.5)
    out = decode_attention_triton(*args, num_kv_splits=splits, k_scale=ks, v_scale=vs)
    ref = decode_attention_ref(*args, k_scale=ks, v_scale=vs)
    assert not out.isnan().any() and rel_err(out, ref) < 1e-5
    dense = decode_attention_ref(q, p["k_buffer"], p["v_buffer"], p["req_to_token"], p["req_pool_indices"],
                                 p["seq_lens"], d ** -0.5)
    assert rel_err(out, dense) < 0.06  # e4m3 rounding of K and V only
    unscaled = decode_attention_triton(*args, num_kv_splits=splits)  # scales dropped: far off
    assert rel_err(unscaled, dense) > 1.0


@pytest.mark.parametrize("prefix,ext", [([0], [37]), ([0, 65, 3], [5, 70, 1])])
def test_extend_fp8_matches_reference(interp_device, prefix, ext):
    p = make_paged(len(ext), 6, 2, 32, prefix, ext, torch.float32, interp_device, seed=len(ext))
    ks, vs = 0.5, 0.01
    f = _fp8_paged(p, ks, vs)
    q = torch.randn(sum(ext), 6, 32, device=interp_device)
    args = (q, f["k_buffer"], f["v_buffer"], f["req_to_token"], f["req_pool_indices"], f["prefix_lens"],
            f["extend_lens"], 32 ** -0.5)
    out = extend_attention_triton(*args, k_scale=ks, v_scale=vs)
    ref = extend_attention_ref(*args, k_scale=ks, v_scale=vs)
    assert not out.isnan().any() and rel_err(out, ref) < 1e-5
    dense = extend_attention_ref(q, p["k_buffer"], p["v_buffer"], p["req_to_token"], p["req_pool_indices"],
                                 p["prefix_lens"], p["extend_lens"], 32 ** -0.5)
    assert rel_err(out, dense) < 0.06
    assert rel_err(extend_attention_triton(*args, k_scale=ks), dense) > 1.0  # v scale dropped


def test_torch_backend_on_fp8_pool_agrees_with_references():
    """The engine's SDPA backend stores through KVPool.set_kv (x / scale, saturated) and reads dequantized."""
    from sgl_jupyter.engine.attention.torch_ref import TorchAttnBackend
    from sgl_jupyter.engine.forward_batch import ForwardBatch, ForwardMode
    from sgl_jupyter.engine.kv_pool import KVPool

    hq, hkv, d = 9, 3, 16
    prefix, ext = [0, 5, 12], [4, 3, 1]
    p = make_paged(3, hq, hkv, d, prefix, ext, torch.float32, "cpu")
    scales = [0.5, 0.03]  # layer 1's scales differ from layer 0's: the backend must use the layer's own
    pool = KVPool(p["k_buffer"].shape[0] - 1, 2, hkv, d, FP8, torch.device("cpu"), k_scales=scales,
                  v_scales=[2 * s for s in scales])
    r2t, rows = p["req_to_token"], p["req_pool_indices"]
    every = torch.arange(p["k_buffer"].shape[0])
    for layer in (0, 1):
        pool.set_kv(layer, every, p["k_buffer"] * scales[layer] * 8, p["v_buffer"] * scales[layer] * 8)
    for mode, pre, ex in [(ForwardMode.EXTEND, prefix, ext),
                          (ForwardMode.DECODE, [n + e - 1 for n, e in zip(prefix, ext)], [1, 1, 1])]:
        T = sum(ex)
        loc = torch.cat([r2t[r, a:a + e].long() for r, a, e in zip(rows.tolist(), pre, ex)])
        fb = ForwardBatch.build(mode, [0] * T, [0] * T, loc, rows.tolist(), pre, ex, r2t, [], torch.device("cpu"))
        q = torch.randn(T, hq, d)
        be = TorchAttnBackend(hq, hkv, d, torch.device("cpu"))
        be.init_forward_metadata(fb)
        for layer in (0, 1):
            ks, vs = pool.k_scales[layer], pool.v_scales[layer]
            k, v = pool.read_kv(layer, loc, torch.float32)  # re-store what is there
            out = be.forward(q, k, v, layer, fb, pool, 0.25).view(T, hq, d)
            kb, vb = pool.k_buffers[layer], pool.v_buffers[layer]
            if mode is ForwardMode.DECODE:
                ref = decode_attention_ref(q, kb, vb, r2t, rows, fb.seq_lens, 0.25, ks, vs)
            else:
                ref = extend_attention_ref(q, kb, vb, r2t, rows, fb.prefix_lens, fb.extend_lens, 0.25, ks, vs)
            assert rel_err(out, ref) < 1e-5, (mode, layer)


def test_fp8_pool_holds_twice_the_tokens_of_bf16_in_the_same_bytes():
    from sgl_jupyter.engine.kv_pool import KVPool, kv_bytes_per_token, kv_cache_torch_dtype

    assert kv_cache_torch_dtype("auto", torch.bfloat16) == torch.bfloat16
    assert kv_cache_torch_dtype("fp8_e4m3", torch.bfloat16) == FP8
    bf16 = kv_bytes_per_token(30, 3, 64, torch.bfloat16)
    assert kv_bytes_per_token(30, 3, 64, FP8) * 2 == bf16
    pool = KVPool(64, 2, 3, 64, FP8, torch.device("cpu"))
    assert pool.k_buffers[0].dtype == FP8 and pool.k_buffers[0].element_size() == 1
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        kv_cache_torch_dtype("fp8_e5m2", torch.bfloat16)
    with pytest.raises(ValueError, match="fp8"):
        KVPool(8, 1, 1, 8, torch.float32, torch.device("cpu"), k_scales=[0.5], v_scales=[1.0])
