"""Exact jump-forward: grammar-forced text is drafted and verified like speculative decoding, so outputs
are those of step-by-step masked decoding (greedy: token for token; sampling: in distribution), and
rejected drafts leave no KV behind. Also: a broken grammar fails its own request only."""
from __future__ import annotations

import json

import pytest
import torch
from scipy.stats import chisquare

from sgl_jupyter.bench.constrained import set_jump_forward
from sgl_jupyter.engine.constrained import GrammarMatcher, allocate_token_bitmask
from sgl_jupyter.engine.jump_forward import verify_drafts
from sgl_jupyter.engine.sampling import SamplingParams, SamplingRow

from tests.conftest import assert_no_leak
from tests.engine.test_constrained_engine import LONG_KEYS, SCHEMAS, SEED_REGEX, SEED_USER_TURN, chat

V = 64  # vocabulary of the synthetic verification tests


def rows_for(params: SamplingParams, n: int, generator=None) -> list[SamplingRow]:
    return [SamplingRow(params, [1], [], (), generator) for _ in range(n)]


# --- verify_drafts on synthetic logits ---------------------------------------------------------------
def test_greedy_accepts_drafts_up_to_the_first_that_is_not_the_masked_argmax():
    logits = torch.full((3, V), -5.0)
    logits[0, 5] = logits[1, 9] = logits[2, 3] = 1.0
    params = SamplingParams(temperature=0)
    masks = allocate_token_bitmask(3, V)
    assert verify_drafts(logits.clone(), [5, 7], masks, rows_for(params, 3)) == (1, 9)  # correction: 9
    assert verify_drafts(logits.clone(), [5, 9], masks, rows_for(params, 3)) == (2, 3)  # all accepted, then 3
    masks[1, 0] &= ~(1 << 9)  # the grammar forbids 9 after 5: the masked argmax is the draft, 7 beats the rest
    logits[1, 7] = 0.5
    assert verify_drafts(logits.clone(), [5, 7], masks, rows_for(params, 3)) == (2, 3)


def test_sampled_verification_keeps_the_masked_processed_distribution():
    """First token of a step with drafts [d0, d1]: distributed as q0 (the processed, masked distribution);
    given d0 was accepted, the second as q1. Chi-square over 4000 seeded trials."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, V, generator=g) * 2
    d0, d1 = int(logits[0].argsort()[-3]), int(logits[1].argsort()[-2])  # plausible, not the favourites
    masks = allocate_token_bitmask(3, V)
    masks[0, 1] = 0  # the grammar forbids tokens 32..63 at the first position
    params = SamplingParams(temperature=0.8, top_k=12)
    first, second = torch.zeros(V), torch.zeros(V)
    gen = torch.Generator().manual_seed(1)
    for _ in range(4000):
        accepted, tok = verify_drafts(logits.clone(), [d0, d1], masks, rows_for(params, 3), gen)
        first[d0 if accepted else tok] += 1
        if accepted:
            second[d1 if accepted == 2 else tok] += 1

    def processed(row: torch.Tensor, allowed: int) -> torch.Tensor:
        x = row.clone()
        x[allowed:] = float("-inf")
        x = x / 0.8
        keep = x.topk(12).indices
        p = torch.zeros(V)
        p[keep] = torch.softmax(x[keep], dim=0)
        return p

    for counts, q in ((first, processed(logits[0], 32)), (second, processed(logits[1], V))):
        support = q > 0
        assert counts[~support].sum() == 0
        expected = q[support] * counts.sum()
        assert chisquare(counts[support].numpy(), expected.numpy()).pvalue > 0.001


# --- end to end: greedy outputs are unchanged, steps are cut --------------------------------------
CHINESE_SCHEMA = {"type": "object", "properties": {
    "姓名": {"type": "string", "maxLength": 6}, "年龄": {"type": "integer", "minimum": 0, "maximum": 150},
    "城市": {"enum": ["北京", "上海", "广州"]}}, "required": ["姓名", "年龄", "城市"]}
REGEXES = [SEED_REGEX, r"(yes|no)", r"[0-9]{3}-[0-9]{4}", r"姓名:(张三|李四),年龄:\d{1,3}岁",
           r'\{"城市": "[^"]{1,8}", "人口": \d{1,9}\}', r"The answer is (true|false)\."]


def constrained_requests(engine) -> tuple[list[str], list[dict]]:
    prompts, params = [], []
    for s in SCHEMAS + [LONG_KEYS, CHINESE_SCHEMA]:
        prompts.append(chat(engine, f"请根据以下 JSON schema 生成一个例子:{json.dumps(s, ensure_ascii=False)}"))
        params.append({"json_schema": s, "temperature": 0, "max_new_tokens": 96})
    for r in REGEXES:
        prompts.append(chat(engine, SEED_USER_TURN if "name" in r else f"请按照这个格式回答:{r}"))
        params.append({"regex": r, "temperature": 0, "max_new_tokens": 64})
    return prompts, params


def test_greedy_outputs_are_the_same_with_and_without_jump_forward(engine):
    prompts, params = constrained_requests(engine)
    sched = engine.scheduler
    before = (engine.runner.forward_calls, sched.draft_tokens_total, sched.draft_tokens_accepted)
    with_jf = engine.generate(prompts, params)
    steps_jf = engine.runner.forward_calls - before[0]
    drafted, accepted = sched.draft_tokens_total - before[1], sched.draft_tokens_accepted - before[2]
    set_jump_forward(engine, False)
    try:
        calls = engine.runner.forward_calls
        plain = engine.generate(prompts, params)
        steps_plain = engine.runner.forward_calls - calls
    finally:
        set_jump_forward(engine, True)
    for a, b, p in zip(with_jf, plain, params):
        assert a["output_ids"] == b["output_ids"], (p, a["text"], b["text"])
        assert a["meta_info"]["finish_reason"] == b["meta_info"]["finish_reason"]
    assert 0 < accepted < drafted  # drafts were both accepted and rejected along the way
    assert steps_jf < steps_plain
    assert_no_leak(engine)


def test_sampled_runs_with_rejected_drafts_leave_no_kv_behind(engine):
    prompts, params = constrained_requests(engine)
    params = [{**p, "temperature": 1.0, "seed": i} for i, p in enumerate(params)]
    sched = engine.scheduler
    drafted, accepted = sched.draft_tokens_total, sched.draft_tokens_accepted
    outs = engine.generate(prompts, params)
    assert sched.draft_tokens_accepted - accepted < sched.draft_tokens_total - drafted
    assert all(o["meta_info"]["finish_reason"]["type"] in ("stop", "length") for o in outs)
    assert_no_leak(engine)


# --- a broken grammar fails alone --------------------------------------------------------------------
class BrokenMatcher(GrammarMatcher):
    """A matcher whose method ``method`` raises after ``after`` good calls (a corrupted grammar state)."""

    def __init__(self, *args, method: str, after: int):
        super().__init__(*args)
        self._calls, self._method, self._after = 0, method, after

    def _tick(self, name: str) -> None:
        if name == self._method:
            self._calls += 1
            if self._calls > self._after:
                raise RuntimeError("grammar matcher state is corrupted")

    def fill_bitmask(self, bitmask, row):
        self._tick("fill_bitmask")
        return super().fill_bitmask(bitmask, row)

    def accept_token(self, token_id):
        self._tick("accept_token")
        return super().accept_token(token_id)


@pytest.mark.parametrize("method", ["fill_bitmask", "accept_token"])
def test_a_broken_grammar_aborts_its_request_and_the_batch_goes_on(engine, monkeypatch, method):
    broken_regex = r"[a-z ]{4,40}\."
    reqs = [(chat(engine, "Describe a cat."), {"regex": broken_regex, "temperature": 0, "max_new_tokens": 32}),
            (chat(engine, SEED_USER_TURN), {"regex": SEED_REGEX, "temperature": 0, "max_new_tokens": 40}),
            (chat(engine, "Tell me about Paris."), {"temperature": 0, "max_new_tokens": 16}),
            (chat(engine, "Give a customer record."), {"json_schema": LONG_KEYS, "temperature": 0, "max_new_tokens": 64})]
    apart = [engine.generate(p, sp) for p, sp in reqs[1:]]
    backend = engine._grammar_backend
    real = backend.new_matcher

    def new_matcher(compiled):
        if compiled.spec == broken_regex:
            return BrokenMatcher(compiled, backend.stop_token_ids, backend.vocab_size, method=method, after=3)
        return real(compiled)

    monkeypatch.setattr(backend, "new_matcher", new_matcher)
    outs = engine.generate([p for p, _ in reqs], [sp for _, sp in reqs])
    reason = outs[0]["meta_info"]["finish_reason"]
    assert reason["type"] == "abort" and "grammar matcher state is corrupted" in reason["message"]
    assert [o["output_ids"] for o in outs[1:]] == [o["output_ids"] for o in apart]
    assert_no_leak(engine)
