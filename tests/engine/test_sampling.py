"""Sampling parameters: validation, semantics, seeds, stops, logprobs."""
from __future__ import annotations

import math

import pytest
import torch

from sgl_jupyter.engine.errors import InvalidRequestError
from sgl_jupyter.engine.sampling import SamplingParams, filter_top_k_top_p_min_p
from tests.conftest import assert_no_leak


@pytest.mark.parametrize("params, field", [
    ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_k": 0}, "top_k"),
    ({"min_p": 2}, "min_p"), ({"max_new_tokens": -3}, "max_new_tokens"), ({"max_new_tokens": "ten"}, "max_new_tokens"),
    ({"frequency_penalty": 5}, "frequency_penalty"), ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"n": 0}, "n"), ({"stop": [1, 2]}, "stop"), ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"min_new_tokens": 9, "max_new_tokens": 4}, "min_new_tokens"), ({"regex": "a", "json_schema": "{}"}, "regex"),
])
def test_invalid_values_name_the_field(engine, params, field):
    with pytest.raises(InvalidRequestError, match=field):
        engine.generate("Hi", params)
    assert engine.generate("Hi", {"max_new_tokens": 1})["meta_info"]["completion_tokens"] == 1


def test_none_means_default_and_unknown_keys_are_ignored():
    p = SamplingParams.from_dict({"temperature": None, "top_p": None, "stop": None, "future_field": 1,
                                  "max_tokens": 7})
    assert p.temperature == 1.0 and p.top_p == 1.0 and p.stop == [] and p.max_new_tokens == 7


def test_bad_inputs_are_rejected(engine):
    with pytest.raises(InvalidRequestError, match="exactly one"):
        engine.generate()
    with pytest.raises(InvalidRequestError, match="input_ids"):
        engine.generate(input_ids=[1, 10**9])
    with pytest.raises(InvalidRequestError, match="empty"):
        engine.generate("")
    with pytest.raises(InvalidRequestError, match="context length"):
        engine.generate(input_ids=[5] * (engine.max_context + 1))
    assert_no_leak(engine)


def test_max_new_tokens_zero_is_prefill_only(engine):
    out = engine.generate("Warm the cache with this text.", {"max_new_tokens": 0})
    assert out["text"] == "" and out["output_ids"] == []
    assert out["meta_info"]["finish_reason"]["type"] == "length"


def test_seeded_sampling_is_reproducible(engine):
    params = {"max_new_tokens": 12, "temperature": 1.0, "seed": 1234}
    a = engine.generate("Tell me a story:", params)["output_ids"]
    b = engine.generate("Tell me a story:", params)["output_ids"]
    c = engine.generate("Tell me a story:", dict(params, seed=99))["output_ids"]
    assert a == b and a != c


def test_n_returns_n_samples(engine):
    outs = engine.generate("Pick a word:", {"max_new_tokens": 4, "temperature": 1.0, "n": 3, "seed": 7})
    assert isinstance(outs, list) and len(outs) == 3
    assert len({tuple(o["output_ids"]) for o in outs}) > 1


def test_stop_string_is_trimmed_and_reported(engine):
    base = engine.generate("1, 2, 3, 4,", {"max_new_tokens": 12, "temperature": 0})["text"]
    stop = base.strip()[:3].strip() or base[:2]
    out = engine.generate("1, 2, 3, 4,", {"max_new_tokens": 12, "temperature": 0, "stop": [stop]})
    assert stop not in out["text"]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert base.startswith(out["text"])


def test_stop_token_ids_and_min_new_tokens(engine):
    ref = engine.generate("The alphabet: a b c", {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True})
    target = ref["output_ids"][2]
    out = engine.generate("The alphabet: a b c", {"max_new_tokens": 8, "temperature": 0, "stop_token_ids": [target]})
    assert out["output_ids"][-1] == target and len(out["output_ids"]) <= 3
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": target}
    chat = engine.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                                add_generation_prompt=True)
    short = engine.generate(chat, {"max_new_tokens": 40, "temperature": 0})
    assert short["meta_info"]["finish_reason"]["type"] == "stop"
    forced = engine.generate(chat, {"max_new_tokens": 40, "temperature": 0,
                                    "min_new_tokens": short["meta_info"]["completion_tokens"] + 3})
    assert forced["meta_info"]["completion_tokens"] >= short["meta_info"]["completion_tokens"] + 3


def test_penalties_change_greedy_output(engine):
    base = engine.generate("la la la la la", {"max_new_tokens": 10, "temperature": 0})["output_ids"]
    pen = engine.generate("la la la la la", {"max_new_tokens": 10, "temperature": 0,
                                             "repetition_penalty": 1.8, "frequency_penalty": 1.5})["output_ids"]
    assert base != pen


def test_logprobs_match_hf(engine, hf_model, tokenizer):
    text = "The capital of France is Paris."
    ids = tokenizer.encode(text, add_special_tokens=False)
    out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 3, "temperature": 0},
                          return_logprob=True, logprob_start_len=0, top_logprobs_num=2, return_text_in_logprobs=True)
    meta = out["meta_info"]
    with torch.no_grad():
        logits = hf_model(torch.tensor([ids + out["output_ids"]])).logits[0].float()
    ref = torch.log_softmax(logits, -1)
    inp = meta["input_token_logprobs"]
    assert len(inp) == len(ids) and inp[0][0] is None and inp[0][1] == ids[0]
    for pos in range(1, len(ids)):
        assert math.isclose(inp[pos][0], ref[pos - 1, ids[pos]].item(), abs_tol=1e-3)
        assert inp[pos][1] == ids[pos] and isinstance(inp[pos][2], str)
    for k, (lp, tok, _) in enumerate(meta["output_token_logprobs"]):
        assert math.isclose(lp, ref[len(ids) - 1 + k, tok].item(), abs_tol=1e-3)
    assert len(meta["output_top_logprobs"][0]) == 2
    # a later logprob_start_len returns only the tail (what `select` scoring uses)
    tail = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 0}, return_logprob=True,
                           logprob_start_len=len(ids) - 2)
    got = [x[0] for x in tail["meta_info"]["input_token_logprobs"]]
    assert len(got) == 2
    assert all(math.isclose(a, b[0], abs_tol=1e-4) for a, b in zip(got, inp[-2:]))


def test_filter_top_k_top_p_min_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    one = torch.ones(1)
    k2 = filter_top_k_top_p_min_p(probs, torch.tensor([2]), one, torch.zeros(1))
    assert torch.allclose(k2, torch.tensor([[0.625, 0.375, 0, 0]]))
    p = filter_top_k_top_p_min_p(probs, torch.tensor([-1]), torch.tensor([0.7]), torch.zeros(1))
    assert (p[0, 2:] == 0).all() and p[0, 1] > 0
    m = filter_top_k_top_p_min_p(probs, torch.tensor([-1]), one, torch.tensor([0.5]))
    assert (m[0, 2:] == 0).all()
