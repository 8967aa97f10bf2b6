"""OpenAI-compatible endpoints against a real server: the seed's curl, the official `openai` client
(completions, chat, streaming, n, stop, logprobs, usage with cached tokens, JSON output). The oracle
for text is the in-process engine on the same greedy request."""
from __future__ import annotations

import json
import math
import subprocess

import jsonschema
import openai
import pytest

SEED_PROMPT = "你好,请用一句话介绍你自己。"
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def oai(url):
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def engine_text(engine, prompt: str, max_new_tokens: int, **params) -> str:
    return engine.generate(prompt, {"max_new_tokens": max_new_tokens, "temperature": 0, **params})["text"]


def chat_prompt(engine, messages) -> str:
    return engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_seed_curl_returns_the_documented_json_with_usage(url, engine):
    """The seed article's exact curl command (section 3.3), run with the real curl."""
    body = json.dumps({"model": "Qwen2-7B-Instruct", "prompt": SEED_PROMPT, "max_tokens": 64}, ensure_ascii=False)
    tokens: list[int] = []
    unsubscribe = engine.subscribe(lambda e: tokens.extend(e.token_ids) if type(e).__name__ == "TokenEvent" else None)
    try:
        out = subprocess.run(["curl", "-sS", "-X", "POST", f"{url}/v1/completions", "-H",
                              "Content-Type: application/json", "-d", body],
                             capture_output=True, timeout=120, check=True).stdout.decode("utf-8")
    finally:
        unsubscribe()
    res = json.loads(out)
    assert res["id"].startswith("cmpl-")
    assert res["object"] == "text_completion"
    assert isinstance(res["created"], int)
    assert res["model"] == "Qwen2-7B-Instruct"
    (choice,) = res["choices"]
    assert isinstance(choice["text"], str) and choice["text"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = res["usage"]
    assert usage["prompt_tokens"] == len(engine.tokenizer.encode(SEED_PROMPT, add_special_tokens=False))
    assert 0 < usage["completion_tokens"] <= 64
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # UTF-8 survives the trip: the text is the sampled tokens' decoding, less a character cut off at the end
    # (a sampled byte token that no later token completes is the model's "\ufffd", as in HF's decode).
    assert len(tokens) == usage["completion_tokens"]
    want = engine.tokenizer.decode(tokens, skip_special_tokens=True)
    assert choice["text"] == want.rstrip("\ufffd") and not choice["text"].endswith("\ufffd")


def test_completion_matches_the_in_process_engine(oai, engine):
    prompt = "The capital of France is"
    res = oai.completions.create(model="x", prompt=prompt, max_tokens=12, **GREEDY)
    assert res.choices[0].text == engine_text(engine, prompt, 12)
    assert res.usage.completion_tokens == 12 or res.choices[0].finish_reason == "stop"


def test_chat_completion_uses_the_models_chat_template(oai, engine):
    messages = [{"role": "user", "content": "What is 2+2? Answer briefly."}]
    res = oai.chat.completions.create(model="x", messages=messages, max_tokens=20, **GREEDY)
    msg = res.choices[0].message
    assert msg.role == "assistant"
    assert msg.content == engine_text(engine, chat_prompt(engine, messages), 20)
    assert res.object == "chat.completion"
    assert res.usage.prompt_tokens == len(engine.tokenizer.encode(chat_prompt(engine, messages),
                                                                  add_special_tokens=False))


def test_completion_streaming_concatenates_to_the_full_text(oai, engine):
    prompt = "Once upon a time"
    chunks = list(oai.completions.create(model="x", prompt=prompt, max_tokens=16, stream=True,
                                         stream_options={"include_usage": True}, **GREEDY))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == engine_text(engine, prompt, 16)
    assert [c for c in chunks if c.choices][-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16


def test_chat_streaming_sends_role_then_content_then_finish(oai, engine):
    messages = [{"role": "user", "content": "Name a color."}]
    chunks = list(oai.chat.completions.create(model="x", messages=messages, max_tokens=12, stream=True,
                                              stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == engine_text(engine, chat_prompt(engine, messages), 12)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens


def test_stop_string_ends_the_text_before_it(oai, engine):
    prompt = "List of fruits: apple, banana,"
    full = engine_text(engine, prompt, 24)
    words = [w for w in full.split(" ") if len(w) > 2]
    assert words, full
    stop = words[min(1, len(words) - 1)]
    res = oai.completions.create(model="x", prompt=prompt, max_tokens=24, stop=[stop], **GREEDY)
    choice = res.choices[0]
    assert choice.text == full[:full.index(stop)]
    assert choice.finish_reason == "stop"
    assert choice.model_extra["matched_stop"] == stop


def test_n_choices_are_indexed_and_counted(oai, engine):
    prompt = "A random word:"
    res = oai.completions.create(model="x", prompt=prompt, max_tokens=6, n=3, temperature=1.0, seed=7,
                                 extra_body={"ignore_eos": True})
    assert [c.index for c in res.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in res.choices)
    assert res.usage.completion_tokens == 3 * 6
    assert res.usage.prompt_tokens == len(engine.tokenizer.encode(prompt, add_special_tokens=False))  # once
    chat = oai.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, n=2,
                                       temperature=1.0)
    assert [c.index for c in chat.choices] == [0, 1]


def test_n_streaming_delivers_every_choice(oai):
    chunks = list(oai.completions.create(model="x", prompt="Hello", max_tokens=5, n=2, stream=True,
                                         temperature=1.0, seed=3))
    finished = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_completion_logprobs_are_consistent(oai):
    res = oai.completions.create(model="x", prompt="The sky is", max_tokens=6, logprobs=3, **GREEDY)
    lp = res.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == res.usage.completion_tokens
    assert "".join(lp.tokens) == res.choices[0].text
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    for logprob, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and 1 <= len(top) <= 3
        assert math.isclose(logprob, max(top.values()), abs_tol=1e-4)  # greedy picks the top token


def test_chat_logprobs_with_top_logprobs(oai):
    res = oai.chat.completions.create(model="x", messages=[{"role": "user", "content": "Say yes."}],
                                      max_tokens=5, logprobs=True, top_logprobs=2, **GREEDY)
    content = res.choices[0].logprobs.content
    assert len(content) == res.usage.completion_tokens
    for item in content:
        assert len(item.top_logprobs) == 2
        assert math.isclose(item.logprob, item.top_logprobs[0].logprob, abs_tol=1e-4)
        assert item.bytes == list(item.token.encode("utf-8"))


def test_usage_reports_cached_prompt_tokens(oai):
    messages = [{"role": "system", "content": "You are a terse assistant. " * 8},
                {"role": "user", "content": "Reply with one word."}]
    first = oai.chat.completions.create(model="x", messages=messages, max_tokens=2, **GREEDY)
    second = oai.chat.completions.create(model="x", messages=messages, max_tokens=2, **GREEDY)
    assert second.usage.prompt_tokens == first.usage.prompt_tokens
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens // 2


PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name", "age"], "additionalProperties": False}


def test_json_schema_output_is_valid(oai):
    res = oai.chat.completions.create(
        model="x", max_tokens=64, temperature=0,
        messages=[{"role": "user", "content": "请根据以下信息生成用户资料:张三,28岁。Answer in JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    data = json.loads(res.choices[0].message.content)
    jsonschema.validate(data, PERSON)


def test_json_object_output_is_a_json_object(oai):
    res = oai.completions.create(model="x", prompt="A JSON object describing a cat:", max_tokens=48,
                                 temperature=0, extra_body={"response_format": {"type": "json_object"}})
    if res.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(res.choices[0].text), dict)
    else:  # cut by max_tokens: still a valid prefix of an object
        assert res.choices[0].text.lstrip().startswith("{")


def test_models_lists_the_served_model(oai, server, engine):
    models = oai.models.list()
    assert [m.id for m in models.data] == [server.app.state.sgl.served_model_name]
    assert oai.models.retrieve(models.data[0].id).id == models.data[0].id
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model")


def test_bad_parameters_raise_openai_errors(oai):
    with pytest.raises(openai.BadRequestError) as exc:
        oai.completions.create(model="x", prompt="hi", max_tokens=4, top_p=0)
    assert "top_p" in str(exc.value)
    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(model="x", messages=[], max_tokens=4)
    assert "messages" in str(exc.value)


def test_echo_returns_the_prompt_and_its_logprobs(oai, engine):
    prompt = "The sky is"
    res = oai.completions.create(model="x", prompt=prompt, max_tokens=3, echo=True, logprobs=1, **GREEDY)
    choice = res.choices[0]
    assert choice.text == prompt + engine_text(engine, prompt, 3)
    lp = choice.logprobs
    n_prompt = len(engine.tokenizer.encode(prompt, add_special_tokens=False))
    assert len(lp.tokens) == n_prompt + res.usage.completion_tokens
    assert lp.token_logprobs[0] is None and all(x <= 0 for x in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == choice.text


def test_token_id_prompts(oai, engine):
    ids = engine.tokenizer.encode("The capital of France is", add_special_tokens=False)
    res = oai.completions.create(model="x", prompt=[ids, ids], max_tokens=5, **GREEDY)
    expected = engine_text(engine, "The capital of France is", 5)
    assert [c.text for c in res.choices] == [expected, expected]
