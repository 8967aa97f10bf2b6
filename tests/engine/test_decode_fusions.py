"""The model's fused decode path (issue 18) on CPU: the paths the GPU takes at one row (norms and SiLU*mul in
the GEMV prologues, RoPE + KV store in one kernel, attention told the KV is stored) forced on and run through
Triton's interpreter, against the plain CPU path on the same tiny checkpoint: the same greedy tokens, through
decode batches of one (the fused case), batches and prefix-cache hits."""
from __future__ import annotations

import pytest
import torch

from sgl_jupyter.engine.layers import rotary
from sgl_jupyter.kernels import gemv, store_kv
from sgl_jupyter.kernels._triton import HAS_TRITON
from tests.conftest import write_peaked_tiny_llama

pytestmark = pytest.mark.skipif(not HAS_TRITON or torch.cuda.is_available(),
                                reason="forces the CUDA path through Triton's interpreter (CPU with triton only)")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, model_path) -> str:
    return write_peaked_tiny_llama(tmp_path_factory.mktemp("tiny_llama_fusions"), model_path, 64, 160, 512)


def _run(path: str) -> list[list[int]]:
    from sgl_jupyter import Engine

    prompts = [[5, 17, 300, 42, 9, 1000, 77], [11, 12, 13], [400] * 20]
    params = {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}
    with Engine(path, device="cpu", max_total_tokens=1024) as eng:
        one_by_one = [eng.generate(input_ids=p, sampling_params=params)["output_ids"] for p in prompts]
        batched = [o["output_ids"] for o in eng.generate(input_ids=prompts, sampling_params=params)]
        assert eng.get_server_info()["kv"]["used"] == 0
    assert batched == one_by_one
    return one_by_one


def test_fused_decode_path_gives_the_plain_paths_tokens(tiny_llama, monkeypatch):
    plain = _run(tiny_llama)
    launches = {"prologue": 0, "rope_store": 0}
    real_gemv, real_rope_store = gemv.gemv_triton, store_kv.rope_store_kv_triton

    def counted_gemv(*a, **kw):
        launches["prologue"] += kw.get("prologue") is not None
        return real_gemv(*a, **kw)

    def counted_rope_store(*a, **kw):
        launches["rope_store"] += 1
        return real_rope_store(*a, **kw)

    monkeypatch.setattr(gemv, "fusable", lambda x, w: x.dim() == 2 and x.shape[0] == 1)  # "one CUDA row"
    monkeypatch.setattr(gemv, "gemv_triton", counted_gemv)
    monkeypatch.setattr(store_kv, "rope_store_kv_triton", counted_rope_store)
    monkeypatch.setattr(rotary.RopeForBatch, "in_place", property(lambda self: True))  # the CUDA rope path
    fused = _run(tiny_llama)
    assert launches["prologue"] > 0 and launches["rope_store"] > 0
    assert fused == plain


def test_one_switch_turns_both_fusions_off(tiny_llama, monkeypatch):
    """``decode_fusions(False)`` (``SGL_DECODE_FUSIONS=0``) leaves the prologues and the RoPE + store kernel out
    of engines built inside, though the GEMV itself would run: ``bench latency --peers unfused`` relies on it."""
    from sgl_jupyter.kernels import fusions

    x, w = torch.zeros(1, 8), torch.zeros(4, 8)
    with monkeypatch.context() as m:  # "a CUDA row": the prologue's switch alone decides
        m.setattr(gemv, "one_row", lambda x, w: True)
        assert gemv.fusable(x, w)
        with fusions.decode_fusions(False):
            assert not gemv.fusable(x, w)
        assert gemv.fusable(x, w)
    launches = []
    monkeypatch.setattr(store_kv, "rope_store_kv_triton", lambda *a, **kw: launches.append(1))
    monkeypatch.setattr(rotary.RopeForBatch, "in_place", property(lambda self: True))  # the CUDA rope path
    with fusions.decode_fusions(False):
        _run(tiny_llama)
    assert fusions.ON and not launches
