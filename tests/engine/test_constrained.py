"""GrammarBackend / GrammarMatcher / bitmask against xgrammar and the embedded model's real tokenizer."""
from __future__ import annotations

import json
import re
import threading
import time

import pytest
import torch

from sgl_jupyter.engine.constrained import (
    GrammarBackend,
    allocate_token_bitmask,
    apply_token_bitmask,
    apply_token_bitmask_torch,
    normalize_regex,
    regex_for_choices,
)
from sgl_jupyter.engine.errors import InvalidRequestError
from sgl_jupyter.engine.jump_forward import plan_drafts

SEED_REGEX = r'{"name": "[^"]+", "age": \d+}'
EOS = 2  # <|im_end|> of SmolLM2-Instruct


@pytest.fixture(scope="module")
def tokenizer():
    # the tokenizer alone (no engine): overrides the session fixture that loads the whole model
    from transformers import AutoTokenizer

    from sgl_jupyter.engine.default_model import default_model_path

    return AutoTokenizer.from_pretrained(default_model_path())


@pytest.fixture(scope="module")
def backend(tokenizer):
    return GrammarBackend(tokenizer, vocab_size=len(tokenizer), eos_ids=[EOS])


def allowed_ids(bitmask: torch.Tensor, row: int, vocab: int) -> set[int]:
    words = bitmask[row].numpy().view("uint32")
    return {t for t in range(vocab) if (int(words[t >> 5]) >> (t & 31)) & 1}


# --- regex syntax --------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern, expected", [
    (SEED_REGEX, r'\{"name": "[^"]+", "age": \d+\}'),
    (r"a{2}b{1,3}c{2,}", r"a{2}b{1,3}c{2,}"),
    (r"a{,3}", r"a{0,3}"),
    (r"x{}y{a}", r"x\{\}y\{a\}"),
    (r"[{}]\{\}", r"[{}]\{\}"),
    (r"[]{]", r"[\]{]"),
    (r"(?P<year>\d{4})", r"(?<year>\d{4})"),
])
def test_normalize_regex_rewrites_python_only_spellings(pattern, expected):
    assert normalize_regex(pattern) == expected


def test_normalize_regex_keeps_the_language_python_means():
    samples = ['{"name": "张三", "age": 28}', "{}", "{a}", "aaa", "aa{,3}", "{2}", "{{", "}"]
    for pattern in [SEED_REGEX, r"a{,3}", r"\{\d+\}", r"{{", r"}", r"x?{a}"]:
        py, ours = re.compile(pattern), re.compile(normalize_regex(pattern))
        for s in samples:
            assert bool(py.fullmatch(s)) == bool(ours.fullmatch(s)), (pattern, s)


def test_regex_for_choices_escapes_metacharacters(backend, tokenizer):
    pattern = regex_for_choices(["a+b", "张三 (zhang)", "x|y"])
    assert re.fullmatch(pattern, "张三 (zhang)") and re.fullmatch(pattern, "x|y")
    assert not re.fullmatch(pattern, "aab")
    m = backend.new_matcher(backend.compile("regex", pattern))
    assert m.accept_token_ids(tokenizer.encode("x|y")) and m.is_completed()
    with pytest.raises(InvalidRequestError, match="non-empty list"):
        regex_for_choices([])


# --- compile errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, spec, message", [
    ("regex", "(ab", r"invalid regex '\(ab': missing \), unterminated subpattern at position 0"),
    ("regex", "[z-a]", r"invalid regex '\[z-a\]': bad character range z-a"),
    ("regex", r"(?<=a)b", r"not supported by the grammar engine: .*Lookbehind is not supported"),
    ("regex", "", "the regex is empty"),
    ("json_schema", '{"type": "object",', "invalid json_schema: not valid JSON"),
    ("json_schema", '{"type": "objekt"}', r"invalid json_schema at type: 'objekt' is not valid"),
    ("json_schema", {"type": "object", "properties": {"a": {"$ref": "#/defs/x"}}}, "invalid json_schema: .*defs"),
    ("json_schema", {"type": "string", "pattern": "(ab"}, "invalid json_schema at pattern: '\\(ab' is not a 'regex'"),
    ("ebnf", 'root ::= "a" | b', 'invalid ebnf grammar: .*Rule "b" is not defined'),
    ("ebnf", 'root ::= "a', "invalid ebnf grammar: .*string literal"),
    ("xml", "<a/>", "unknown grammar kind 'xml'"),
])
def test_bad_grammar_raises_invalid_request_naming_the_problem(backend, kind, spec, message):
    with pytest.raises(InvalidRequestError, match=message) as info:
        backend.compile(kind, spec)
    assert isinstance(info.value, ValueError)
    assert "/project/cpp" not in str(info.value)  # no C++ source locations leak into user messages


def test_failed_compile_is_not_cached_and_backend_keeps_working(backend):
    before = backend.stats.errors
    for _ in range(2):
        with pytest.raises(InvalidRequestError):
            backend.compile("regex", "((")
    assert backend.stats.errors == before + 2
    assert backend.compile("regex", r"\d+").kind == "regex"


# --- cache ---------------------------------------------------------------------------------------
def test_compile_is_cached_by_canonical_spec(backend):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    first = backend.compile("json_schema", schema)
    hits = backend.stats.hits
    assert backend.compile("json_schema", json.dumps(schema, indent=4)) is first
    assert backend.compile("json_schema", schema) is first
    assert backend.stats.hits == hits + 2
    reordered = {"required": ["a"], "properties": {"a": {"type": "integer"}}, "type": "object"}
    assert backend.compile("json_schema", reordered) is not first  # key order can change the output: keep apart
    assert backend.compile("regex", r"\d+") is not backend.compile("ebnf", r'root ::= [0-9]+')


def test_concurrent_compiles_of_one_grammar_compile_once(tokenizer):
    fresh = GrammarBackend(tokenizer, vocab_size=len(tokenizer), eos_ids=[EOS])
    schema = {"type": "object", "properties": {f"k{i}": {"type": "string", "maxLength": 9} for i in range(8)}}
    results, barrier = [], threading.Barrier(4)

    def work():
        barrier.wait()
        results.append(fresh.compile("json_schema", schema))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(r is results[0] for r in results)
    assert (fresh.stats.misses, fresh.stats.hits) == (1, 3)


def test_compile_releases_the_gil_so_the_engine_thread_keeps_running(tokenizer):
    fresh = GrammarBackend(tokenizer, vocab_size=len(tokenizer), eos_ids=[EOS], max_threads=1)
    item = {"type": "object", "properties": {"x": {"type": "integer", "minimum": -1000, "maximum": 99999},
                                             "s": {"type": "string", "pattern": "[a-z]{3,9}-[0-9]{2,5}"}}}
    schema = {"type": "object", "properties": {f"field_{i}": {"type": "array", "items": item} for i in range(40)}}
    ticks, stop = [0], threading.Event()

    def spin():  # stands in for the scheduler thread: pure Python, needs the GIL
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    th = threading.Thread(target=spin)
    th.start()
    try:
        t0, c0 = time.perf_counter(), ticks[0]
        fresh.compile("json_schema", schema)
        elapsed, ticked = time.perf_counter() - t0, ticks[0] - c0
    finally:
        stop.set()
        th.join()
    assert elapsed > 0.05, f"schema compiled in {elapsed:.3f}s: too fast to tell"
    assert ticked >= 0.3 * elapsed / 0.0011, (ticked, elapsed)


# --- matcher -------------------------------------------------------------------------------------
def test_seed_regex_accepts_the_seed_answer_then_only_eos(backend, tokenizer):
    m = backend.new_matcher(backend.compile("regex", SEED_REGEX))
    ids = tokenizer.encode('{"name": "张三", "age": 28}')
    for t in ids:
        assert m.accept_token(t)
    assert m.is_completed() and not m.is_terminated()
    assert m.forced_stop_token() == EOS
    assert m.accept_token(EOS) and m.is_terminated()
    assert not m.accept_token(ids[0])  # nothing after the end
    assert m.jump_forward() is None


def test_rejected_token_leaves_state_unchanged(backend, tokenizer):
    m = backend.new_matcher(backend.compile("regex", SEED_REGEX))
    assert m.accept_token_ids(tokenizer.encode('{"name": "'))
    quote = tokenizer.encode('"')[0]
    assert not m.accept_token(quote)  # [^"]+ needs one character first
    assert not m.accept_token(EOS)
    assert m.accept_token_ids(tokenizer.encode('李'))
    assert m.accept_token(quote)
    assert not m.accept_token_ids(tokenizer.encode(', "age": x'))
    assert m.jump_forward() == ', "age": '  # the failed multi-token accept was undone


def test_bitmask_allows_eos_only_where_the_grammar_may_end(backend, tokenizer):
    vocab = len(tokenizer)
    m = backend.new_matcher(backend.compile("regex", SEED_REGEX))
    bm = allocate_token_bitmask(1, vocab)
    m.fill_bitmask(bm, 0)
    start = allowed_ids(bm, 0, vocab)
    assert EOS not in start
    texts = {tokenizer.decode([t]) for t in start}
    assert texts and all('{"name": "'.startswith(s) or s.startswith('{"name": "') for s in texts)
    assert m.accept_token_ids(tokenizer.encode('{"name": "张三", "age": 2'))
    m.fill_bitmask(bm, 0)
    mid = allowed_ids(bm, 0, vocab)
    assert EOS not in mid and tokenizer.encode("}")[0] in mid
    assert m.accept_token_ids(tokenizer.encode("8}"))
    m.fill_bitmask(bm, 0)
    assert allowed_ids(bm, 0, vocab) == {EOS}


def test_rollback_restores_earlier_state(backend, tokenizer):
    m = backend.new_matcher(backend.compile("regex", SEED_REGEX))
    ids = tokenizer.encode('{"name": "张三", "age"')
    assert m.accept_token_ids(ids)
    m.rollback(3)
    assert m.num_accepted == len(ids) - 3
    assert m.accept_token_ids(ids[-3:])
    with pytest.raises(ValueError, match="only"):
        m.rollback(len(ids) + 1)


def test_json_object_accepts_any_json_and_rejects_prose(backend, tokenizer):
    m = backend.new_matcher(backend.compile("json_object"))
    assert m.accept_token_ids(tokenizer.encode('{"城市": ["北京", 1.5, null]}')) and m.is_completed()
    m2 = backend.new_matcher(backend.compile("json_object", None))
    assert not m2.accept_token_ids(tokenizer.encode("Sure! Here"))
    assert not m2.accept_token_ids(tokenizer.encode("[1, 2]"))  # OpenAI's json_object: an object
    assert backend.compile("json_schema", "$$ANY$$") is backend.compile("json_object")  # SGLang's spelling


# --- bitmask application -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_apply_token_bitmask_masks_listed_rows_only(backend, tokenizer, dtype):
    vocab = len(tokenizer)
    bm = allocate_token_bitmask(3, vocab)
    m = backend.new_matcher(backend.compile("regex", SEED_REGEX))
    m.fill_bitmask(bm, 0)
    m2 = backend.new_matcher(backend.compile("regex", r"[0-9]{3}"))
    m2.fill_bitmask(bm, 2)
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(0)).to(dtype)
    ours, ref = logits.clone(), logits.clone()
    apply_token_bitmask(ours, bm, [0, 2])
    apply_token_bitmask_torch(ref, bm, [0, 2])
    assert torch.equal(ours, ref)
    assert torch.equal(ours[1], logits[1])  # the free request's row is untouched
    finite = {t for t in range(vocab) if torch.isfinite(ours[2, t])}
    assert finite == allowed_ids(bm, 2, vocab) and all(tokenizer.decode([t]).isdigit() for t in finite)


def test_apply_token_bitmask_torch_works_on_inference_tensors(backend, tokenizer):
    vocab = len(tokenizer)
    bm = allocate_token_bitmask(2, vocab)
    backend.new_matcher(backend.compile("regex", r"[0-9]+")).fill_bitmask(bm, 1)
    with torch.inference_mode():
        logits = torch.zeros(2, vocab)  # like the model's output
    apply_token_bitmask_torch(logits, bm, [1])
    assert torch.isinf(logits[1]).sum() > vocab - 100 and not torch.isinf(logits[0]).any()


def test_apply_token_bitmask_with_padded_logits_masks_the_padding(tokenizer):
    vocab = len(tokenizer) + 64  # lm_head padded past the tokenizer
    backend = GrammarBackend(tokenizer, vocab_size=vocab, eos_ids=[EOS])
    m = backend.new_matcher(backend.compile("regex", r"[0-9]+"))
    bm = allocate_token_bitmask(1, vocab)
    m.fill_bitmask(bm, 0)
    logits = torch.zeros(1, vocab)
    apply_token_bitmask(logits, bm, torch.tensor([0]))
    assert torch.isinf(logits[0, len(tokenizer):]).all()


def test_apply_token_bitmask_rejects_mismatched_rows(tokenizer):
    with pytest.raises(ValueError, match="one row per logits row"):
        apply_token_bitmask(torch.zeros(2, len(tokenizer)), allocate_token_bitmask(1, len(tokenizer)), [0])


# --- jump-forward --------------------------------------------------------------------------------
def test_jump_forward_string_is_the_forced_text(backend, tokenizer):
    m = backend.new_matcher(backend.compile("regex", SEED_REGEX))
    assert m.jump_forward() == '{"name": "'
    assert m.accept_token_ids(tokenizer.encode('{"name": "张'))
    assert m.jump_forward() is None


def test_plan_drafts_at_start_drafts_the_canonical_tokens_and_leaves_the_matcher(backend, tokenizer):
    m = backend.new_matcher(backend.compile("regex", SEED_REGEX))
    plan = plan_drafts(m, tokenizer, max_tokens=64)
    assert plan.certain == [] and plan.drafts == tokenizer.encode('{"name": "')  # "{" or '{"' may start it
    assert plan.masks.shape[0] == len(plan.drafts) + 1
    assert m.num_accepted == 0 and m.jump_forward() == '{"name": "'


def test_plan_drafts_appends_tokens_the_mask_admits_alone(backend, tokenizer):
    m = backend.new_matcher(backend.compile("regex", SEED_REGEX))
    assert m.accept_token_ids(tokenizer.encode('{"name": "张三"'))
    plan = plan_drafts(m, tokenizer, max_tokens=64)
    forced = tokenizer.encode(', "age": ')
    assert plan.certain == forced[:1] and plan.drafts == forced[1:]  # after '"' only "," fits; ' "age' could follow
    # each mask row is what the matcher fills after accepting the tokens before it
    ref = backend.new_matcher(backend.compile("regex", SEED_REGEX))
    assert ref.accept_token_ids(tokenizer.encode('{"name": "张三"') + plan.certain)
    row = allocate_token_bitmask(1, len(tokenizer))
    for j, tok in enumerate(plan.drafts + [None]):
        ref.fill_bitmask(row, 0)
        assert torch.equal(row[0], plan.masks[j])
        assert tok is None or ref.accept_token(tok)
    logprob_plan = plan_drafts(m, tokenizer, max_tokens=64, allow_certain=False)
    assert logprob_plan.certain == [] and logprob_plan.drafts == forced


def test_plan_drafts_is_empty_when_nothing_is_forced(backend, tokenizer):
    m = backend.new_matcher(backend.compile("regex", r"(yes|no)"))
    plan = plan_drafts(m, tokenizer, max_tokens=64)
    assert plan.certain == [] and plan.drafts == [] and plan.masks is None and m.num_accepted == 0


def test_plan_drafts_respects_the_token_budget(backend, tokenizer):
    m = backend.new_matcher(backend.compile("regex", SEED_REGEX))
    plan = plan_drafts(m, tokenizer, max_tokens=2)
    assert plan.certain + plan.drafts == tokenizer.encode('{"name": "')[:2] and m.num_accepted == 0
    assert plan_drafts(m, tokenizer, max_tokens=0).drafts == []


def test_json_schema_jump_forward_covers_fixed_keys(backend, tokenizer):
    schema = {"type": "object", "properties": {
        "customer_full_legal_name": {"type": "string", "maxLength": 8},
        "customer_account_identifier": {"type": "integer"}},
        "required": ["customer_full_legal_name", "customer_account_identifier"]}
    m = backend.new_matcher(backend.compile("json_schema", schema))
    assert m.jump_forward() == '{"customer_full_legal_name": "'
    assert m.accept_token_ids(tokenizer.encode('{"customer_full_legal_name": "Ann"'))
    assert m.jump_forward() == ', "customer_account_identifier": '


def test_string_length_bounds_compile_to_an_equivalent_fast_pattern(backend, tokenizer):
    from sgl_jupyter.engine.grammar_spec import rewrite_string_lengths

    schema = {"type": "object", "properties": {
        "a": {"type": "string", "maxLength": 3}, "b": {"type": "string", "minLength": 1, "maxLength": 2},
        "c": {"type": "string", "maxLength": 3, "pattern": "^x+$"}, "maxLength": {"type": "integer"}},
        "required": ["a", "b", "c", "maxLength"], "default": {"type": "string", "maxLength": 1}}
    out = rewrite_string_lengths(schema)
    assert "maxLength" not in out["properties"]["a"] and out["properties"]["b"]["pattern"].endswith("{1,2}$")
    assert out["properties"]["c"] == schema["properties"]["c"]  # an explicit pattern is left alone
    assert out["properties"]["maxLength"] == {"type": "integer"} and out["default"] == schema["default"]

    def accepts(text):
        m = backend.new_matcher(backend.compile("json_schema", schema))
        return m.accept_token_ids(tokenizer.encode(text)) and m.is_completed()

    assert accepts('{"a": "张三丰", "b": "x", "c": "xx", "maxLength": 1}')
    assert not accepts('{"a": "张三丰四", "b": "x", "c": "xx", "maxLength": 1}')  # maxLength counts characters
    assert not accepts('{"a": "", "b": "", "c": "xx", "maxLength": 1}')  # minLength
    assert not accepts('{"a": "a\tb", "b": "x", "c": "xx", "maxLength": 1}')  # raw control characters: not JSON
    # the point of the rewrite: masks inside a short string are cheap (xgrammar's own form: ~5 ms a step)
    m = backend.new_matcher(backend.compile("json_schema", {"type": "string", "maxLength": 10}))
    assert m.accept_token_ids(tokenizer.encode('"张三'))
    bitmask = allocate_token_bitmask(1, len(tokenizer))
    m.fill_bitmask(bitmask, 0)
    t0 = time.perf_counter()
    for _ in range(20):
        m.fill_bitmask(bitmask, 0)
    assert (time.perf_counter() - t0) / 20 < 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_apply_token_bitmask_on_cuda_matches_the_torch_reference(backend, tokenizer, dtype):
    vocab = len(tokenizer)
    bm = allocate_token_bitmask(4, vocab)
    backend.new_matcher(backend.compile("regex", SEED_REGEX)).fill_bitmask(bm, 0)
    backend.new_matcher(backend.compile("regex", r"[0-9]{3}")).fill_bitmask(bm, 3)
    logits = torch.randn(4, vocab, generator=torch.Generator().manual_seed(0)).to(dtype)
    ref = logits.clone()
    apply_token_bitmask_torch(ref, bm, [0, 3])
    with torch.inference_mode():
        gpu = logits.cuda()  # an inference tensor, like the model's output
    apply_token_bitmask(gpu, bm, [0, 3])
    assert torch.equal(gpu.cpu(), ref)
    fallback = logits.cuda()
    apply_token_bitmask_torch(fallback, bm, [0, 3])
    assert torch.equal(fallback.cpu(), ref)
