"""Sampling on the device inside multi-step decode graphs (CUDA only): sampled batches take the graphs,
a seeded request draws the same tokens on the graph path as on the eager one-step path, runs repeat
exactly, and the draw follows the parameters (seeds differ -> outputs differ; top_k=1 is greedy).
A small float32 Llama with random weights keeps it quick and its numerics tight."""
from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import tokenizer_dir

pytestmark = pytest.mark.gpu

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
          "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
          "vocab_size": 49152, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "tie_word_embeddings": False, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from sgl_jupyter import Engine

    d = tmp_path_factory.mktemp("tiny_llama")
    (d / "config.json").write_text(json.dumps(CONFIG))
    kwargs = {"tokenizer_path": tokenizer_dir()}  # SmolLM2's tokenizer, vocab 49152
    eng = Engine(str(d), load_format="dummy", dtype="float32", device="cuda", cuda_graph_max_bs=16,
                 max_running_requests=16, **kwargs)
    yield eng
    eng.shutdown()


def _ids(i: int) -> list[int]:
    g = torch.Generator().manual_seed(i)
    return torch.randint(100, 40000, (12 + i,), generator=g).tolist()


def _params(seed: int, **kw) -> dict:
    return {"max_new_tokens": 24, "ignore_eos": True, "temperature": 0.8, "top_p": 0.95, "seed": seed, **kw}


def test_sampled_batches_take_the_multi_step_graphs(engine):
    assert engine.runner.multi_step_sampling
    before = engine.scheduler.sampled_launches
    outs = engine.generate(input_ids=[_ids(i) for i in range(8)], sampling_params=[_params(i) for i in range(8)])
    assert all(len(o["output_ids"]) == 24 for o in outs)
    assert engine.scheduler.sampled_launches > before


def test_seeded_sampling_is_the_same_on_the_graph_and_the_eager_path(engine):
    batch = [_ids(i) for i in range(6)]
    params = [_params(100 + i) for i in range(6)]
    graph = engine.generate(input_ids=batch, sampling_params=params)
    again = engine.generate(input_ids=batch, sampling_params=params)
    sched = engine.scheduler
    k = sched.continuous_decode_steps
    engine._call(lambda: setattr(sched, "continuous_decode_steps", 1))  # one eager step per token
    try:
        eager = engine.generate(input_ids=batch, sampling_params=params)
    finally:
        engine._call(lambda: setattr(sched, "continuous_decode_steps", k))
    assert [o["output_ids"] for o in graph] == [o["output_ids"] for o in again]
    assert [o["output_ids"] for o in graph] == [o["output_ids"] for o in eager]


def test_seeds_and_parameters_change_the_draw(engine):
    a = engine.generate(input_ids=_ids(1), sampling_params=_params(1))["output_ids"]
    b = engine.generate(input_ids=_ids(1), sampling_params=_params(2))["output_ids"]
    assert a != b
    greedy = engine.generate(input_ids=_ids(1), sampling_params={"max_new_tokens": 24, "ignore_eos": True,
                                                                 "temperature": 0})["output_ids"]
    top1 = engine.generate(input_ids=_ids(1), sampling_params=_params(3, top_k=1))["output_ids"]
    assert top1 == greedy  # top_k=1 draws the argmax inside the sampled graph too
