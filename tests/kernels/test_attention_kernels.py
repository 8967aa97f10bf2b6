"""Paged decode and prefix-aware extend attention: Triton kernels vs their float32 torch references,
and the references vs the engine's SDPA-based torch backend (an independent implementation)."""
from __future__ import annotations

import pytest
import torch

from sgl_jupyter.kernels.decode_attention import decode_attention_ref, decode_attention_triton
from sgl_jupyter.kernels.extend_attention import extend_attention_ref, extend_attention_triton

from .helpers import REL_TOL, make_paged, rel_err

# (q heads, kv heads, head dim): MHA, GQA 4 and 8, SmolLM2's 9q/3kv
HEADS = [(8, 8, 64), (32, 8, 128), (32, 4, 128), (9, 3, 64), (16, 2, 64)]


def _decode(p, q, scale, **kw):
    args = (q, p["k_buffer"], p["v_buffer"], p["req_to_token"], p["req_pool_indices"], p["seq_lens"], scale)
    return decode_attention_triton(*args, **kw), decode_attention_ref(*args)


def _extend(p, q, scale):
    args = (q, p["k_buffer"], p["v_buffer"], p["req_to_token"], p["req_pool_indices"], p["prefix_lens"],
            p["extend_lens"], scale)
    return extend_attention_triton(*args), extend_attention_ref(*args)


# --- small shapes: CUDA, or the Triton interpreter on CPU -------------------------------------------

@pytest.mark.parametrize("hq,hkv,d", [(9, 3, 64), (8, 2, 32)])
@pytest.mark.parametrize("splits", [1, 3])
def test_decode_matches_reference_small(interp_device, hq, hkv, d, splits):
    seq = [1, 70, 129]
    p = make_paged(3, hq, hkv, d, [n - 1 for n in seq], [1] * 3, torch.float32, interp_device, seed=splits)
    q = torch.randn(3, hq, d, device=interp_device)
    out, ref = _decode(p, q, d ** -0.5, num_kv_splits=splits)
    assert rel_err(out, ref) < 1e-5


def test_decode_split_scratch_can_be_larger_than_needed(interp_device):
    """The backend hands in views of scratch sized for the largest batch: rows beyond B are ignored."""
    p = make_paged(2, 4, 2, 32, [10, 90], [1, 1], torch.float32, interp_device)
    q = torch.randn(2, 4, 32, device=interp_device)
    mid_o = torch.full((2, 4, 2, 32), float("nan"), device=interp_device)
    mid_lse = torch.full((2, 4, 2), float("nan"), device=interp_device)
    out, ref = _decode(p, q, 0.2, num_kv_splits=2, mid_o=mid_o, mid_lse=mid_lse)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("prefix,ext", [([0], [37]), ([0, 65, 3], [5, 70, 1]), ([130, 0], [64, 65])])
def test_extend_matches_reference_small(interp_device, prefix, ext):
    p = make_paged(len(ext), 6, 2, 32, prefix, ext, torch.float32, interp_device, seed=len(ext))
    q = torch.randn(sum(ext), 6, 32, device=interp_device)
    out, ref = _extend(p, q, 32 ** -0.5)
    assert rel_err(out, ref) < 1e-5


def test_extend_reads_a_query_view_of_fused_qkv(interp_device):
    """q as a strided view of a packed qkv projection (what the model hands over) needs no copy."""
    p = make_paged(2, 4, 2, 32, [3, 0], [9, 4], torch.float32, interp_device)
    qkv = torch.randn(13, (4 + 2 + 2) * 32, device=interp_device)
    q = qkv[:, :128].view(13, 4, 32)
    out, ref = _extend(p, q, 0.3)
    assert out.is_contiguous() and rel_err(out, ref) < 1e-5


# --- the references against the engine's torch backend (SDPA with a prefix-aware mask) --------------

def test_references_agree_with_engine_torch_backend():
    from sgl_jupyter.engine.attention.torch_ref import TorchAttnBackend
    from sgl_jupyter.engine.forward_batch import ForwardBatch, ForwardMode
    from sgl_jupyter.engine.kv_pool import KVPool

    hq, hkv, d = 9, 3, 16
    prefix, ext = [0, 5, 12], [4, 3, 1]
    p = make_paged(3, hq, hkv, d, prefix, ext, torch.float32, "cpu")
    pool = KVPool(p["k_buffer"].shape[0] - 1, 1, hkv, d, torch.float32, torch.device("cpu"))
    pool.k_buffers[0].copy_(p["k_buffer"])
    pool.v_buffers[0].copy_(p["v_buffer"])
    r2t, rows = p["req_to_token"], p["req_pool_indices"]
    for mode, pre, ex in [(ForwardMode.EXTEND, prefix, ext), (ForwardMode.DECODE, [n + e - 1 for n, e in
                                                                                 zip(prefix, ext)], [1, 1, 1])]:
        T = sum(ex)
        loc = torch.cat([r2t[r, a:a + e].long() for r, a, e in zip(rows.tolist(), pre, ex)])
        fb = ForwardBatch.build(mode, [0] * T, [0] * T, loc, rows.tolist(), pre, ex, r2t, [], torch.device("cpu"))
        q = torch.randn(T, hq, d)
        k, v = pool.k_buffers[0][loc].clone(), pool.v_buffers[0][loc].clone()  # re-store what is there
        be = TorchAttnBackend(hq, hkv, d, torch.device("cpu"))
        be.init_forward_metadata(fb)
        engine_out = be.forward(q, k, v, 0, fb, pool, 0.25).view(T, hq, d)
        if mode is ForwardMode.DECODE:
            ref = decode_attention_ref(q, pool.k_buffers[0], pool.v_buffers[0], r2t, rows, fb.seq_lens, 0.25)
        else:
            ref = extend_attention_ref(q, pool.k_buffers[0], pool.v_buffers[0], r2t, rows, fb.prefix_lens,
                                       fb.extend_lens, 0.25)
        assert rel_err(engine_out, ref) < 1e-5, mode


# --- full shapes on CUDA ---------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("hq,hkv,d", HEADS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("splits", [1, 8, 32])
def test_decode_matches_reference_cuda(hq, hkv, d, dtype, splits):
    seq = [1, 63, 64, 65, 1000, 4097]
    p = make_paged(len(seq), hq, hkv, d, [n - 1 for n in seq], [1] * len(seq), dtype, "cuda", seed=hq + d)
    q = torch.randn(len(seq), hq, d, device="cuda").to(dtype)
    out, ref = _decode(p, q, d ** -0.5, num_kv_splits=splits)
    assert not out.isnan().any()
    assert rel_err(out, ref) < REL_TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("hq,hkv,d", HEADS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("prefix,ext", [
    ([0], [1]), ([0], [2048]), ([4096], [1]), ([4096, 0, 1000, 17], [300, 129, 1, 64]),
    ([0, 0, 0], [1, 17, 128]), ([2048, 512], [513, 7])])
def test_extend_matches_reference_cuda(hq, hkv, d, dtype, prefix, ext):
    p = make_paged(len(ext), hq, hkv, d, prefix, ext, dtype, "cuda", seed=sum(prefix))
    q = torch.randn(sum(ext), hq, d, device="cuda").to(dtype)
    out, ref = _extend(p, q, d ** -0.5)
    assert not out.isnan().any()
    assert rel_err(out, ref) < REL_TOL[dtype]


@pytest.mark.gpu
def test_decode_is_capturable_in_a_cuda_graph():
    """Lengths live on the device: replaying a captured decode with longer sequences gives the new answer."""
    hq, hkv, d = 32, 8, 128
    p = make_paged(4, hq, hkv, d, [99, 199, 299, 399], [1] * 4, torch.bfloat16, "cuda")
    q = torch.randn(4, hq, d, device="cuda", dtype=torch.bfloat16)
    seq_lens = torch.tensor([10, 20, 30, 40], device="cuda")
    mid_o = torch.empty(4, hq, 8, d, device="cuda")
    mid_lse = torch.empty(4, hq, 8, device="cuda")
    args = lambda: (q, p["k_buffer"], p["v_buffer"], p["req_to_token"], p["req_pool_indices"], seq_lens,  # noqa
                    d ** -0.5)
    decode_attention_triton(*args(), num_kv_splits=8, mid_o=mid_o, mid_lse=mid_lse)  # compile outside capture
    out = torch.empty(4, hq, d, device="cuda", dtype=torch.bfloat16)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_attention_triton(*args(), num_kv_splits=8, mid_o=mid_o, mid_lse=mid_lse, out=out)
    seq_lens.copy_(p["seq_lens"])
    graph.replay()
    ref = decode_attention_ref(*args())
    assert rel_err(out, ref) < REL_TOL[torch.bfloat16]
