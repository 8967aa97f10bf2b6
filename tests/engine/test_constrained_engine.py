"""Constrained decoding end to end: the real embedded model through sgl_jupyter.Engine on CPU.

Uses the session ``engine`` fixture from tests/conftest.py (one model load for the whole run)."""
from __future__ import annotations

import json
import re
import threading

import jsonschema
import pytest
import torch

from sgl_jupyter.bench.constrained import set_jump_forward
from sgl_jupyter.engine.constrained import allocate_token_bitmask, apply_token_bitmask
from sgl_jupyter.engine.errors import InvalidRequestError

SEED_REGEX = r'{"name": "[^"]+", "age": \d+}'
SEED_USER_TURN = "请根据以下信息生成用户资料:张三,28岁"


def chat(engine, user: str) -> str:
    return engine.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                add_generation_prompt=True)


def count_steps(engine, fn):
    """Run fn() and count the model forward passes the engine made meanwhile (the engine is otherwise idle)."""
    before = engine.runner.forward_calls
    out = fn()
    return out, engine.runner.forward_calls - before


# --- the seed's promise ----------------------------------------------------------------------------
def test_seed_regex_100_samples_at_temperature_1(engine):
    """The seed's example, sampled 100 times at temperature 1.0: every finished output matches the regex
    and every output cut by max_new_tokens is a valid prefix of a match. The 135M model sometimes loops
    inside ``[^"]+`` or ``\\d+`` (random text or digits for hundreds of tokens); those are the only misses.

    Measured (seeds 0..99, 256 tokens): 85 finish with jump-forward, 82 without (both exact masked
    sampling, so the same distribution); the mask blocks ~0.1% of the model's mass inside the name and
    P(close) per step falls to ~1e-3 once the name drifts. The bound leaves room for sampling noise."""
    prompt = chat(engine, SEED_USER_TURN)
    params = [{"regex": SEED_REGEX, "temperature": 1.0, "max_new_tokens": 256, "seed": i} for i in range(100)]
    outs = engine.generate([prompt] * 100, params)
    finished = [o for o in outs if o["meta_info"]["finish_reason"]["type"] == "stop"]
    cut = [o for o in outs if o["meta_info"]["finish_reason"]["type"] == "length"]
    assert len(finished) + len(cut) == 100
    bad = [o["text"] for o in finished if not re.fullmatch(SEED_REGEX, o["text"])]
    assert not bad, f"{len(bad)} finished outputs do not match, e.g. {bad[:3]}"
    backend = engine._grammar_backend
    for o in cut:  # a cut output is still a prefix the grammar accepts
        assert backend.new_matcher(backend.compile("regex", SEED_REGEX)).accept_token_ids(o["output_ids"])
    assert len(finished) >= 75, f"only {len(finished)}/100 finished within 256 tokens"
    texts = [o["text"] for o in finished]
    assert len(set(texts)) > 10  # really sampled
    assert sum('张三' in t for t in texts) >= 5  # and the model still reads the prompt


# --- JSON schemas of growing difficulty ------------------------------------------------------------
SHORT = {"type": "string", "maxLength": 8}
SCHEMAS = [
    # 1. one required string
    {"type": "object", "properties": {"name": SHORT}, "required": ["name"]},
    # 2. string + integer
    {"type": "object", "properties": {"name": SHORT, "age": {"type": "integer"}}, "required": ["name", "age"]},
    # 3. enum
    {"type": "object", "properties": {"name": SHORT, "gender": {"enum": ["male", "female", "other"]}},
     "required": ["name", "gender"]},
    # 4. numbers with bounds
    {"type": "object", "properties": {
        "age": {"type": "integer", "minimum": 18, "maximum": 65},
        "score": {"type": "integer", "minimum": -5, "maximum": 5},
        "height_m": {"type": "number", "minimum": 0.5, "maximum": 2.5}},
     "required": ["age", "score", "height_m"]},
    # 5. boolean, optional properties
    {"type": "object", "properties": {"name": SHORT, "nickname": SHORT, "married": {"type": "boolean"}},
     "required": ["name", "married"]},
    # 6. bounded array of strings
    {"type": "object", "properties": {"hobbies": {"type": "array", "items": SHORT, "minItems": 1, "maxItems": 3}},
     "required": ["hobbies"]},
    # 7. nested object
    {"type": "object", "properties": {
        "person": {"type": "object", "properties": {"name": SHORT, "age": {"type": "integer", "minimum": 0,
                                                                           "maximum": 150}},
                   "required": ["name", "age"]},
        "city": SHORT}, "required": ["person", "city"]},
    # 8. array of objects
    {"type": "object", "properties": {"children": {"type": "array", "maxItems": 2, "items": {
        "type": "object", "properties": {"name": SHORT, "age": {"type": "integer", "minimum": 0, "maximum": 30}},
        "required": ["name", "age"]}}}, "required": ["children"]},
    # 9. nested object with enum, const and an array of enums
    {"type": "object", "properties": {"user": {"type": "object", "properties": {
        "name": SHORT, "role": {"enum": ["admin", "editor", "viewer"]}, "active": {"const": True},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 2}},
        "required": ["name", "role", "active", "tags"]}}, "required": ["user"]},
    # 10. patterns, anyOf, $defs/$ref, array of bounded integers
    {"$defs": {"score": {"type": "integer", "minimum": 0, "maximum": 100}},
     "type": "object", "properties": {
        "id": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{4}$"},
        "contact": {"anyOf": [{"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"},
                              {"type": "integer", "minimum": 1000, "maximum": 9999}]},
        "scores": {"type": "array", "items": {"$ref": "#/$defs/score"}, "maxItems": 3}},
     "required": ["id", "contact", "scores"]},
]


def test_ten_json_schemas_all_outputs_parse_and_validate(engine):
    prompts, params, schemas = [], [], []
    for i, schema in enumerate(SCHEMAS):
        user = f"请根据以下 JSON schema 生成一个例子:{json.dumps(schema, ensure_ascii=False)}"
        for temperature, seed in ((0.0, None), (0.8, i), (0.8, 100 + i)):
            prompts.append(chat(engine, user))
            params.append({"json_schema": schema, "temperature": temperature, "seed": seed, "max_new_tokens": 96})
            schemas.append(schema)
    outs = engine.generate(prompts, params)
    failures = []
    for out, schema, p in zip(outs, schemas, params):
        try:
            jsonschema.validate(json.loads(out["text"]), schema)
        except (ValueError, jsonschema.ValidationError) as e:
            failures.append((SCHEMAS.index(schema) + 1, p["temperature"], out["text"], str(e)[:80]))
    assert not failures, failures
    assert all(o["meta_info"]["completion_tokens"] <= 64 for o in outs[::3]), "greedy outputs should be short"


# --- jump-forward ----------------------------------------------------------------------------------
LONG_KEYS = {"type": "object", "properties": {
    "customer_full_legal_name": {"type": "string", "maxLength": 8},
    "customer_primary_contact_phone_number": {"type": "integer", "minimum": 0, "maximum": 999},
    "customer_is_currently_an_active_subscriber": {"type": "boolean"}},
    "required": ["customer_full_legal_name", "customer_primary_contact_phone_number",
                 "customer_is_currently_an_active_subscriber"]}


def replay_greedy(hf_model, engine, kind, spec, prompt_ids, out_ids) -> None:
    """Check a greedy constrained output against HF transformers' logits (the oracle): every token must be
    the masked argmax given exactly the tokens before it (what step-by-step decoding picks), the grammar's
    forced tokens included, however many of them jump-forward appended or verified in one step."""
    backend = engine._grammar_backend
    matcher = backend.new_matcher(backend.compile(kind, spec))
    with torch.inference_mode():
        logits = hf_model(torch.tensor([list(prompt_ids) + list(out_ids)])).logits[0].float()
    bitmask = allocate_token_bitmask(1, logits.shape[-1])
    for pos, tok in enumerate(out_ids):
        row = logits[len(prompt_ids) + pos - 1].clone().unsqueeze(0)
        matcher.fill_bitmask(bitmask, 0)
        apply_token_bitmask(row, bitmask, [0])
        best = int(row.argmax())
        assert tok == best, f"diverged at output position {pos}: engine {engine.tokenizer.decode([tok])!r}, " \
            f"oracle {engine.tokenizer.decode([best])!r} after {engine.tokenizer.decode(out_ids[:pos])!r}"
        assert matcher.accept_token(tok)


def test_jump_forward_cuts_model_steps_on_long_fixed_keys(engine, hf_model):
    """Jump-forward is exact (the same tokens as step-by-step decoding) and takes far fewer steps: forced
    key text is verified in the step that samples the next free token. Measured: 83 forwards -> 36."""
    prompt = chat(engine, "Create a customer record for Ann.")
    params = {"json_schema": LONG_KEYS, "temperature": 0, "max_new_tokens": 128}
    engine.generate(prompt, params)  # compile outside the measurement
    engine.flush_cache()
    with_jf, steps_jf = count_steps(engine, lambda: engine.generate(prompt, params))
    set_jump_forward(engine, False)
    try:
        engine.flush_cache()
        without, steps_plain = count_steps(engine, lambda: engine.generate(prompt, params))
    finally:
        set_jump_forward(engine, True)
    jsonschema.validate(json.loads(with_jf["text"]), LONG_KEYS)
    assert with_jf["output_ids"] == without["output_ids"]
    assert steps_plain == without["meta_info"]["completion_tokens"]  # one forward a token without it
    assert steps_jf * 2 <= steps_plain, (steps_jf, steps_plain)
    replay_greedy(hf_model, engine, "json_schema", LONG_KEYS, engine.tokenizer.encode(prompt), with_jf["output_ids"])


def test_jump_forward_outputs_match_the_hf_oracle_on_all_schemas(engine, hf_model):
    """Skipping the forced steps must not change what the model picks: batched (extend-mode decode steps
    mixing requests with drafts and plain ones), every greedy token equals HF's masked argmax over the
    same context."""
    prompts = [chat(engine, f"Example for schema {json.dumps(s)}") for s in SCHEMAS] + [chat(engine, SEED_USER_TURN)]
    specs = [("json_schema", s) for s in SCHEMAS] + [("regex", SEED_REGEX)]
    params = [{kind: spec, "temperature": 0, "max_new_tokens": 96} for kind, spec in specs]
    outs = engine.generate(prompts, params)
    for prompt, (kind, spec), out in zip(prompts, specs, outs):
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        replay_greedy(hf_model, engine, kind, spec, engine.tokenizer.encode(prompt), out["output_ids"])


# --- mixing with free requests ---------------------------------------------------------------------
def test_mixed_batch_equals_requests_run_apart(engine):
    reqs = [
        (chat(engine, SEED_USER_TURN), {"regex": SEED_REGEX, "temperature": 0, "max_new_tokens": 40}),
        (chat(engine, "Tell me about Paris."), {"temperature": 0, "max_new_tokens": 24}),
        (chat(engine, "Give a customer record."), {"json_schema": LONG_KEYS, "temperature": 0, "max_new_tokens": 64}),
        (chat(engine, "你好,请介绍一下你自己。"), {"temperature": 0, "max_new_tokens": 24}),
        (chat(engine, "Is the sky blue?"), {"regex": "(yes|no)", "temperature": 0, "max_new_tokens": 8}),
    ]
    apart = [engine.generate(p, sp)["output_ids"] for p, sp in reqs]
    together = [o["output_ids"] for o in engine.generate([p for p, _ in reqs], [sp for _, sp in reqs])]
    assert together == apart
    assert engine.tokenizer.decode(apart[4], skip_special_tokens=True) in ("yes", "no")


def test_min_new_tokens_never_outlasts_the_grammar(engine):
    """A grammar that must end before min_new_tokens: the grammar wins (EOS allowed), no crash."""
    prompt = chat(engine, "Is the sky blue?")
    for temperature in (0.0, 1.0):
        out = engine.generate(prompt, {"regex": "(yes|no)", "temperature": temperature, "min_new_tokens": 5,
                                       "max_new_tokens": 8, "seed": 1})
        assert out["text"] in ("yes", "no") and out["meta_info"]["finish_reason"]["type"] == "stop"


def test_logprob_requests_use_jump_forward_with_logprobs_from_the_verification(engine):
    """Drafts are verified with the model's logits, so logprob requests jump forward too and every
    returned token has its logprob (certain tokens and forced EOS are not skipped for them)."""
    prompt = chat(engine, SEED_USER_TURN)
    params = {"regex": SEED_REGEX, "temperature": 0, "max_new_tokens": 48}
    out, steps = count_steps(engine, lambda: engine.generate(prompt, params, return_logprob=True, top_logprobs_num=2))
    set_jump_forward(engine, False)
    try:
        plain, plain_steps = count_steps(engine, lambda: engine.generate(prompt, params, return_logprob=True,
                                                                         top_logprobs_num=2))
    finally:
        set_jump_forward(engine, True)
    assert re.fullmatch(SEED_REGEX, out["text"]) and out["output_ids"] == plain["output_ids"]
    assert steps < plain_steps, (steps, plain_steps)
    lps, ref = out["meta_info"]["output_token_logprobs"], plain["meta_info"]["output_token_logprobs"]
    assert [t for _, t, _ in lps] == out["output_ids"] and all(lp <= 0.0 for lp, _, _ in lps)
    assert [lp for lp, _, _ in lps] == pytest.approx([lp for lp, _, _ in ref], abs=1e-3)
    tops = out["meta_info"]["output_top_logprobs"]
    assert len(tops) == len(lps) and all(len(t) == 2 for t in tops)


# --- bad grammars ----------------------------------------------------------------------------------
@pytest.mark.parametrize("params, message", [
    ({"regex": "(ab"}, r"invalid regex '\(ab': missing \)"),
    ({"regex": r"(?<=a)b"}, "not supported by the grammar engine"),
    ({"json_schema": '{"type": "objekt"}'}, "invalid json_schema at type"),
    ({"json_schema": "{not json"}, "invalid json_schema: not valid JSON"),
    ({"ebnf": 'root ::= "a" | b'}, 'Rule "b" is not defined'),
])
def test_bad_grammar_fails_alone_and_engine_keeps_serving(engine, params, message):
    prompt = chat(engine, "Write a long story about a cat.")
    free_result: dict = {}
    runner = threading.Thread(target=lambda: free_result.update(
        engine.generate(prompt, {"temperature": 0, "max_new_tokens": 16})))
    runner.start()
    with pytest.raises(InvalidRequestError, match=message):
        engine.generate(prompt, {**params, "max_new_tokens": 8})
    runner.join(timeout=120)
    assert free_result["meta_info"]["completion_tokens"] == 16
    ok = engine.generate(chat(engine, SEED_USER_TURN), {"regex": SEED_REGEX, "temperature": 0, "max_new_tokens": 40})
    assert re.fullmatch(SEED_REGEX, ok["text"])
