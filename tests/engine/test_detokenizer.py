"""Incremental detokenizer: UTF-8 safety and stop strings across token boundaries."""
from __future__ import annotations

from sgl_jupyter.engine.detokenizer import IncrementalDetokenizer


def _run(tok, text, stop=(), split=1):
    ids = tok.encode(text, add_special_tokens=False)
    d = IncrementalDetokenizer(tok)
    st = d.new_state([1], list(stop))
    deltas = []
    for i in range(0, len(ids), split):
        d.append(st, ids[i:i + split])
        deltas.append(d.take_delta(st))
        if st.matched_stop:
            break
    deltas.append(d.take_delta(st, final=True))
    return deltas, st


def test_chinese_and_emoji_never_split(tokenizer):
    text = "你好，世界！🙂 上海今天天气晴，26°C。"
    deltas, st = _run(tokenizer, text)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_stop_string_across_tokens_is_trimmed(tokenizer):
    deltas, st = _run(tokenizer, "Hello world. The end is near.", stop=["end is"])
    assert "".join(deltas) == "Hello world. The "
    assert st.matched_stop == "end is"


def test_text_that_may_start_a_stop_string_is_held_back(tokenizer):
    d = IncrementalDetokenizer(tokenizer)
    st = d.new_state([1], ["STOP"])
    d.append(st, tokenizer.encode("abc ST", add_special_tokens=False))
    assert d.take_delta(st) == "abc "
    d.append(st, tokenizer.encode("ART", add_special_tokens=False))
    assert d.take_delta(st, final=True) == "START"


def test_rust_fast_path_decodes_as_the_wrapper(tokenizer):
    """The embedded (fast) tokenizer takes the Rust decode path, and every incremental delta, special
    tokens skipped or kept, is what ``tokenizer.decode`` would have produced."""
    import random

    fast, wrapper = IncrementalDetokenizer(tokenizer), IncrementalDetokenizer(tokenizer)
    assert fast._raw is not None
    wrapper._raw = None
    rng = random.Random(0)
    ids = tokenizer.encode("Hi , there . 你好，世界！🙂 ' quoted ' \n\t end", add_special_tokens=False)
    ids += [rng.randrange(tokenizer.vocab_size) for _ in range(200)] + tokenizer.all_special_ids[:3]
    for skip in (True, False):
        deltas = []
        for d in (fast, wrapper):
            st = d.new_state([1], [], skip_special_tokens=skip)
            out = []
            for i in ids:
                d.append(st, [i])
                out.append(d.take_delta(st))
            deltas.append(out + [d.take_delta(st, final=True)])
        assert deltas[0] == deltas[1]
