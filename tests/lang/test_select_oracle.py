"""`select` against a direct log-likelihood computation with HF transformers on the same weights.

The oracle scores each choice on exactly its own tokens: the tokens of `prompt + choice` from the first
one that differs from the prompt's tokenization (a merged boundary token is scored, as token healing
would), each conditioned on everything before it; the mean decides (token-length normalized).
"""
from __future__ import annotations

import pytest
import torch

import sgl_jupyter.lang as sgl

pytestmark = pytest.mark.usefixtures("sgl_backend")

CASES = [
    ("The capital of France is", [" Paris", " London", " Berlin"]),
    ("The capital of France is ", ["Paris", "London", "Berlin"]),  # trailing space merges with the choice
    ("2 + 2 =", [" 4", " 5", " 22"]),
    ("The color of the sky on a clear day is", [" blue", " green", " red", " purple"]),
    ("Q: Is water wet?\nA:", [" Yes", " No"]),
    ("Statement: The capital of Germany is Berlin.\nAnswer:", ["True", "False", "Unknown"]),
    ("Statement: The capital of Canada is Tokyo.\nAnswer:", [" True", " False", " Unknown"]),
    ("A cat says", [" meow", " woof", " moo"]),
    ("The opposite of hot is", [" cold", " warm", " hotter"]),
    ("Monday, Tuesday,", [" Wednesday", " Thursday", " Friday"]),
    ("One, two, three,", [" four", " five", " four five"]),  # one choice is a prefix of another
    ("I like to eat", [" apples", " apple pie", " rocks"]),
    ("中国的首都是", ["北京", "上海", "广州"]),
    ("The sun rises in the", [" east", " west"]),
    ("Water freezes at", [" 0 degrees Celsius", " 100 degrees Celsius"]),
    ("def add(a, b):\n    return", [" a + b", " a - b", " None"]),
    ("The plural of mouse is", [" mice", " mouses"]),
    ("Roses are red, violets are", [" blue", " yellow"]),
    ("<|im_start|>user\nSay hello<|im_end|>\n<|im_start|>assistant\n", ["Hello!", "Goodbye.", "42"]),
    ("My favourite programming language is", [" Python", " Rust", " COBOL", " Python 3"]),
]


def _token_logprobs(hf_model, ids: list[int]) -> list[float]:
    """logprob of ids[j] given ids[:j], for j >= 1 (index j-1)."""
    with torch.no_grad():
        logits = hf_model(torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [logprobs[j - 1, ids[j]].item() for j in range(1, len(ids))]


def _choice_tokens(tokenizer, prompt: str, choice: str) -> tuple[list[int], int]:
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    ids = tokenizer.encode(prompt + choice, add_special_tokens=False)
    same = 0
    while same < min(len(prompt_ids), len(ids)) and ids[same] == prompt_ids[same]:
        same += 1
    return ids, max(same, 1)


def oracle_scores(hf_model, tokenizer, prompt: str, choices: list[str]) -> list[float]:
    scores = []
    for choice in choices:
        ids, start = _choice_tokens(tokenizer, prompt, choice)
        lps = _token_logprobs(hf_model, ids)[start - 1:]
        scores.append(sum(lps) / len(lps))
    return scores


def oracle_unconditional(hf_model, tokenizer, prompt: str, choices: list[str]) -> list[float]:
    scores = []
    for choice in choices:
        ids, start = _choice_tokens(tokenizer, prompt, choice)
        cond = _token_logprobs(hf_model, ids)[start - 1:]
        uncond = [0.0] + _token_logprobs(hf_model, ids[start:])
        scores.append(sum(c - u for c, u in zip(cond, uncond)) / len(cond))
    return scores


@sgl.function
def pick(s, prompt, choices, method):
    s += prompt + sgl.select("answer", choices=choices, choices_method=method)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def test_select_matches_hf_log_likelihood_on_20_cases(hf_model, tokenizer):
    assert len(CASES) == 20
    states = pick.run_batch([{"prompt": p, "choices": c, "method": sgl.token_length_normalized} for p, c in CASES])
    for (prompt, choices), state in zip(CASES, states):
        expected = oracle_scores(hf_model, tokenizer, prompt, choices)
        got = state.get_meta_info("answer")["normalized_prompt_logprobs"]
        assert got == pytest.approx(expected, abs=2e-3), (prompt, choices)
        assert state["answer"] == choices[_argmax(expected)], (prompt, choices, expected)
        assert state.text() == prompt + state["answer"]


def test_unconditional_likelihood_normalized_matches_hf(hf_model, tokenizer):
    cases = CASES[:4]
    states = pick.run_batch([{"prompt": p, "choices": c, "method": sgl.unconditional_likelihood_normalized}
                             for p, c in cases])
    for (prompt, choices), state in zip(cases, states):
        expected = oracle_unconditional(hf_model, tokenizer, prompt, choices)
        got = state.get_meta_info("answer")["normalized_unconditional_prompt_logprobs"]
        assert got == pytest.approx(expected, abs=2e-3), (prompt, choices)
        assert state["answer"] == choices[_argmax(expected)]


def test_greedy_token_selection_compares_token_by_token():
    prompt, choices = CASES[10]  # " four" is a prefix of " four five"
    state = pick.run(prompt=prompt, choices=choices, method=sgl.greedy_token_selection)
    meta = state.get_meta_info("answer")
    matrix = meta["greedy_logprob_matrix"]
    first = [row[0] for row in matrix]
    best_first = max(first)
    leaders = [i for i, v in enumerate(first) if v == best_first]
    assert choices.index(state["answer"]) in leaders
    # padded with the shorter choice's mean logprob
    lengths = [len(t) for t in meta["input_token_logprobs"]]
    short = lengths.index(min(lengths))
    mean = sum(e[0] for e in meta["input_token_logprobs"][short]) / lengths[short]
    assert matrix[short][-1] == pytest.approx(mean)
