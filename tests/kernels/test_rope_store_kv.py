"""RoPE + KV store in one launch (issue 18's decode fusion) against the two kernels it replaces: the q and k
heads of the fused qkv rotated in place and k/v in the pool must be bit for bit what ``rope_inplace`` then
``store_kv_triton`` leave, for bf16 and fp8 pools, strided qkv rows and GQA head counts."""
from __future__ import annotations

import pytest
import torch

from sgl_jupyter.engine.layers.rotary import RotaryEmbedding
from sgl_jupyter.kernels.rope import apply_rope_ref, rope_inplace
from sgl_jupyter.kernels.store_kv import rope_store_kv_triton, store_kv_triton


def _case(device: str, T: int, hq: int, hkv: int, d: int, kv_dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    width = (hq + 2 * hkv) * d
    rows = torch.randn(T, width + 8, generator=g).to(device, torch.bfloat16)
    qkv = rows[:, :width]  # strided rows, as a slice of a wider buffer
    rot = RotaryEmbedding(d, 512, 10000.0).to(device)
    pos = torch.randint(0, 512, (T,), generator=g).to(device)
    slots = 64
    loc = torch.randperm(slots, generator=g)[:T].to(device)
    kb = torch.zeros(slots, hkv, d, device=device, dtype=kv_dtype)
    vb = torch.zeros_like(kb)
    return qkv, rot, pos, loc, kb, vb


@pytest.mark.parametrize("T,hq,hkv,d,kv_dtype", [(1, 4, 2, 64, torch.bfloat16), (3, 6, 1, 32, torch.bfloat16),
                                                 (2, 32, 8, 128, torch.bfloat16), (2, 4, 2, 64, torch.float8_e4m3fn)])
def test_rope_store_kv_equals_rope_then_store(interp_device, T, hq, hkv, d, kv_dtype):
    qkv, rot, pos, loc, kb, vb = _case(interp_device, T, hq, hkv, d, kv_dtype, T * hq + d)
    scales = (0.5, 2.0) if kv_dtype == torch.float8_e4m3fn else (1.0, 1.0)
    want_qkv, want_k, want_v = qkv.clone(), kb.clone(), vb.clone()
    rope_inplace(want_qkv[:, :(hq + hkv) * d].view(T, hq + hkv, d), pos, rot.cos_cache, rot.sin_cache)
    heads = want_qkv.view(T, hq + 2 * hkv, d)
    store_kv_triton(want_k, want_v, loc, heads[:, hq:hq + hkv], heads[:, hq + hkv:], *scales)
    before = qkv.clone()
    rope_store_kv_triton(qkv, hq, hkv, pos, rot.cos_cache, rot.sin_cache, kb, vb, loc, *scales)
    assert torch.equal(qkv, want_qkv)
    assert torch.equal(kb.float(), want_k.float()) and torch.equal(vb.float(), want_v.float())
    # and it is the rotation: q heads against the float32 reference, v untouched in qkv
    src = before.view(T, hq + 2 * hkv, d)
    q_ref, _ = apply_rope_ref(src[:, :hq], src[:, hq:hq + hkv], pos, rot.cos_cache, rot.sin_cache)
    torch.testing.assert_close(qkv.view(T, -1, d)[:, :hq], q_ref, rtol=1.6e-2, atol=1e-2)
    assert torch.equal(qkv.view(T, -1, d)[:, hq + hkv:], src[:, hq + hkv:])
    untouched = torch.ones(kb.shape[0], dtype=torch.bool)
    untouched[loc.cpu()] = False
    assert not kb.float()[untouched.to(kb.device)].any()  # only the step's slots were written


@pytest.mark.gpu
def test_rope_store_kv_llama3_8b_decode_rows_cuda():
    qkv, rot, pos, loc, kb, vb = _case("cuda", 64, 32, 8, 128, torch.bfloat16, 1)
    want_qkv, want_k, want_v = qkv.clone(), kb.clone(), vb.clone()
    rope_inplace(want_qkv[:, :40 * 128].view(64, 40, 128), pos, rot.cos_cache, rot.sin_cache)
    heads = want_qkv.view(64, 48, 128)
    store_kv_triton(want_k, want_v, loc, heads[:, 32:40], heads[:, 40:])
    rope_store_kv_triton(qkv, 32, 8, pos, rot.cos_cache, rot.sin_cache, kb, vb, loc)
    assert torch.equal(qkv, want_qkv) and torch.equal(kb, want_k) and torch.equal(vb, want_v)
