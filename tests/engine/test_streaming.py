"""Streaming: chunks concatenate to the final text and never carry half a character."""
from __future__ import annotations

import asyncio


def _chat(tok, text):
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def test_chinese_stream_concatenates_to_final_text(engine, tokenizer):
    prompt = _chat(tokenizer, "请用中文介绍一下长城。")
    chunks = list(engine.generate(prompt, {"max_new_tokens": 40, "temperature": 0}, stream=True))
    assert chunks[-1]["finished"] and not any(c["finished"] for c in chunks[:-1])
    text = "".join(c["delta"] for c in chunks)
    final = engine.generate(prompt, {"max_new_tokens": 40, "temperature": 0})
    assert text == final["text"] == chunks[-1]["text"]
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text), text
    for c in chunks:
        assert "\ufffd" not in c["delta"]
        assert text.startswith(c["text"])  # `text` is the whole text so far


def test_emoji_stream_has_no_broken_characters(engine):
    chunks = list(engine.generate("Smileys: 😀😃😄😁😆😅 and more: ", {"max_new_tokens": 24, "temperature": 0},
                                  stream=True))
    assert all("\ufffd" not in c["delta"] for c in chunks)


def test_async_generate_and_async_stream(engine):
    async def main():
        one = await engine.async_generate("Hello", {"max_new_tokens": 6, "temperature": 0})
        it = await engine.async_generate("Hello", {"max_new_tokens": 6, "temperature": 0}, stream=True)
        parts = [c async for c in it]
        return one, parts

    one, parts = asyncio.run(main())
    assert "".join(p["delta"] for p in parts) == one["text"]
    assert one["meta_info"]["completion_tokens"] == 6


def test_breaking_out_of_a_stream_aborts_the_request(engine):
    import time

    from tests.conftest import assert_no_leak

    it = engine.generate("Count: 1, 2, 3,", {"max_new_tokens": 200, "temperature": 0, "ignore_eos": True},
                         stream=True)
    for i, _ in enumerate(it):
        if i == 3:
            break
    it.close()
    time.sleep(0.3)
    assert_no_leak(engine)
