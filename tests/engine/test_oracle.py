"""Greedy outputs equal HF transformers on the same weights, token for token."""
from __future__ import annotations

import threading

import pytest
import torch

MAX_NEW = 20


def _prompts(tok) -> list[str]:
    chat = lambda msgs: tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)  # noqa: E731
    return [
        "The capital of France is",
        "def fibonacci(n):",
        "中国的首都是",
        "Once upon a time, in a small village,",
        "1, 2, 3, 4, 5,",
        "The quick brown fox",
        "Python is a programming language that",
        "天气预报说明天",
        chat([{"role": "user", "content": "What is 2+2?"}]),
        chat([{"role": "user", "content": "请用一句话介绍你自己。"}]),
        chat([{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello!"}]),
        chat([{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Apple."},
              {"role": "user", "content": "Another one?"}]),
        chat([{"role": "user", "content": "上海今天天气如何?"}, {"role": "assistant", "content": "晴。"},
              {"role": "user", "content": "明天呢?"}]),
        chat([{"role": "user", "content": "Write a haiku about the sea."}]),
        "Emoji test: 🙂 means",
        "A" * 3 + " long prompt " * 40,
    ]


def _hf_greedy(hf_model, tok, prompt: str) -> list[int]:
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW,
                                do_sample=False, pad_token_id=tok.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def references(hf_model, tokenizer):
    prompts = _prompts(tokenizer)
    return prompts, [_hf_greedy(hf_model, tokenizer, p) for p in prompts]


def test_single_requests_match_hf(engine, references):
    prompts, refs = references
    assert len(prompts) >= 16
    for p, ref in zip(prompts, refs):
        out = engine.generate(p, {"max_new_tokens": MAX_NEW, "temperature": 0})
        assert out["output_ids"] == ref, p


def test_batched_list_matches_hf(engine, references):
    prompts, refs = references
    outs = engine.generate(prompts, {"max_new_tokens": MAX_NEW, "temperature": 0})
    assert [o["output_ids"] for o in outs] == refs


def test_concurrent_threads_match_hf(engine, references):
    prompts, refs = references
    results: dict[int, list[int]] = {}

    def run(i: int) -> None:
        results[i] = engine.generate(prompts[i], {"max_new_tokens": MAX_NEW, "temperature": 0})["output_ids"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(prompts))] == refs
