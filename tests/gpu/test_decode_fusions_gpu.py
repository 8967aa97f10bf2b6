"""The decode fusions on a CUDA GPU, inside the decode CUDA graphs: an engine with the GEMV prologues and the
RoPE + KV store kernel gives the greedy tokens of the same engine with them off (bf16, a small Llama whose
attention is peaked, so rounding-level differences cannot flip a token), one request at a time (the fused
one-row path) and batched, with no KV left behind."""
from __future__ import annotations

import pytest

from tests.conftest import tokenizer_dir, write_peaked_tiny_llama

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return write_peaked_tiny_llama(tmp_path_factory.mktemp("tiny_llama_fusions_gpu"), tokenizer_dir(), 256, 640, 1024)


def _run(path: str, fused: bool) -> list[list[int]]:
    from sgl_jupyter import Engine
    from sgl_jupyter.kernels.fusions import decode_fusions

    prompts = [[5, 17, 300, 42, 9, 1000, 77], [11, 12, 13], [400] * 40, list(range(100, 160))]
    params = {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}
    with decode_fusions(fused), Engine(path, device="cuda", dtype="bfloat16", cuda_graph_max_bs=8,
                                       max_running_requests=8) as eng:
        assert eng.runner.graphs is not None
        one = [eng.generate(input_ids=p, sampling_params=params)["output_ids"] for p in prompts]
        batched = [o["output_ids"] for o in eng.generate(input_ids=prompts, sampling_params=params)]
        assert eng.get_server_info()["kv"]["used"] == 0
    assert batched == one
    return one


def test_fused_decode_graphs_give_the_unfused_tokens(checkpoint):
    assert _run(checkpoint, fused=True) == _run(checkpoint, fused=False)
