"""SGLang's native API as SGLang's own client uses it (SGLANG_NATIVE_API.md): /generate with text,
batches, input_ids, nulls and unknown fields, max_new_tokens=0 scoring, logprobs, whole-text SSE;
/get_model_info, /get_server_info, /flush_cache, /abort_request, /health, /health_generate."""
from __future__ import annotations

import json

import pytest

from .conftest import assert_kv_back_to_full

GREEDY = {"max_new_tokens": 8, "temperature": 0}


def sse_events(client, body: dict) -> list:
    events = []
    with client.stream("POST", "/generate", json=body) as res:
        assert res.status_code == 200
        assert res.headers["content-type"].startswith("text/event-stream")
        for line in res.iter_lines():
            if line.startswith("data:"):
                payload = line[5:].strip()
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_generate_matches_the_engine_and_has_sglang_meta_info(client, engine):
    res = client.post("/generate", json={"text": "The capital of France is", "sampling_params": GREEDY})
    assert res.status_code == 200
    body = res.json()
    expected = engine.generate("The capital of France is", GREEDY)
    assert body["text"] == expected["text"]
    assert body["output_ids"] == expected["output_ids"]
    meta = body["meta_info"]
    for key in ("id", "prompt_tokens", "completion_tokens", "cached_tokens", "finish_reason", "e2e_latency"):
        assert key in meta
    assert meta["finish_reason"]["type"] in ("length", "stop")


def test_every_optional_field_may_be_null_and_unknown_fields_are_ignored(client, engine):
    """What sglang.RuntimeEndpoint sends: all SamplingParams fields, most of them null."""
    sp = {"max_new_tokens": 8, "min_new_tokens": None, "n": None, "stop": [], "stop_token_ids": None,
          "stop_regex": None, "temperature": 0, "top_p": None, "top_k": None, "min_p": None,
          "frequency_penalty": None, "presence_penalty": None, "ignore_eos": None, "regex": None,
          "json_schema": None, "skip_special_tokens": None, "spaces_between_special_tokens": None,
          "dtype": None, "some_future_field": {"x": 1}}
    body = {"text": "Hello, my name is", "sampling_params": sp, "return_logprob": None, "logprob_start_len": None,
            "top_logprobs_num": None, "return_text_in_logprobs": None, "stream": None, "modalities": None,
            "image_data": None, "lora_path": None, "another_unknown": 3}
    res = client.post("/generate", json=body)
    assert res.status_code == 200, res.text
    assert res.json()["text"] == engine.generate("Hello, my name is", GREEDY)["text"]


def test_text_list_is_a_batch_answered_in_order(client, engine):
    prompts = ["One, two, three,", "Roses are red,", "The quick brown fox"]
    res = client.post("/generate", json={"text": prompts, "sampling_params": GREEDY})
    assert res.status_code == 200
    body = res.json()
    assert isinstance(body, list) and len(body) == 3
    assert [b["text"] for b in body] == [engine.generate(p, GREEDY)["text"] for p in prompts]


def test_input_ids_single_and_batch(client, engine):
    ids = engine.tokenizer.encode("The capital of France is", add_special_tokens=False)
    one = client.post("/generate", json={"input_ids": ids, "sampling_params": GREEDY}).json()
    assert one["text"] == engine.generate("The capital of France is", GREEDY)["text"]
    two = client.post("/generate", json={"input_ids": [ids, ids[:3]], "sampling_params": GREEDY}).json()
    assert len(two) == 2 and two[0]["text"] == one["text"]


def test_max_new_tokens_zero_scores_the_prompt(client, engine):
    """select() in SGLang's client: prefill only, input logprobs from logprob_start_len."""
    ids = engine.tokenizer.encode("Paris is the capital of France", add_special_tokens=False)
    body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 0, "temperature": 0}, "return_logprob": True,
            "logprob_start_len": 0, "top_logprobs_num": 2, "return_text_in_logprobs": True}
    res = client.post("/generate", json=body)
    assert res.status_code == 200, res.text
    meta = res.json()["meta_info"]
    assert res.json()["text"] == "" and meta["completion_tokens"] == 0
    lps = meta["input_token_logprobs"]
    assert len(lps) == len(ids)
    assert lps[0][0] is None and all(lp <= 0 for lp, _, _ in lps[1:])
    assert [tid for _, tid, _ in lps] == ids
    assert all(isinstance(text, str) for _, _, text in lps)
    assert len(meta["input_top_logprobs"]) == len(ids)


def test_output_logprobs_and_top_logprobs(client):
    body = {"text": "1, 2, 3,", "sampling_params": {"max_new_tokens": 4, "temperature": 0}, "return_logprob": True,
            "top_logprobs_num": 3}
    meta = client.post("/generate", json=body).json()["meta_info"]
    assert len(meta["output_token_logprobs"]) == meta["completion_tokens"] == 4
    for (lp, tid, text), top in zip(meta["output_token_logprobs"], meta["output_top_logprobs"]):
        assert text is None  # only with return_text_in_logprobs
        assert len(top) == 3 and top[0][1] == tid and abs(top[0][0] - lp) < 1e-4


def test_stream_sends_the_whole_text_so_far_then_done(client, engine):
    events = sse_events(client, {"text": "Once upon a time", "sampling_params": {"max_new_tokens": 12,
                                                                             "temperature": 0}, "stream": True})
    assert events[-1] == "[DONE]"
    texts = [e["text"] for e in events[:-1]]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # cumulative, as SGLang's client expects
    assert texts[-1] == engine.generate("Once upon a time", {"max_new_tokens": 12, "temperature": 0})["text"]
    assert events[-2]["meta_info"]["finish_reason"]["type"] in ("length", "stop")
    assert all(e["meta_info"]["finish_reason"] is None for e in events[:-2])


def test_stream_of_chinese_never_splits_a_character(client):
    events = sse_events(client, {"text": "你好,请用一句话介绍你自己。", "sampling_params": {
        "max_new_tokens": 24, "temperature": 0}, "stream": True})
    assert all("\ufffd" not in e["text"] for e in events[:-1])


def test_regex_constrained_generation(client):
    """The seed's structured-output example, through the native API."""
    regex = r'\{"name": "[^"]{1,10}", "age": \d{1,3}\}'
    res = client.post("/generate", json={"text": "请根据以下信息生成用户资料:张三,28岁\n",
                                         "sampling_params": {"max_new_tokens": 40, "temperature": 0, "regex": regex}})
    assert res.status_code == 200, res.text
    import re

    assert re.fullmatch(regex, res.json()["text"]), res.json()["text"]


def test_regex_with_a_chinese_literal(client):
    regex = r'张三, \d{1,3}岁'  # the first sampled token ends inside 张: the rest is forced from mid-character
    res = client.post("/generate", json={"text": "用户资料:", "sampling_params": {
        "max_new_tokens": 30, "temperature": 0, "regex": regex}})
    assert res.status_code == 200, res.text
    import re

    assert re.fullmatch(regex, res.json()["text"])


def test_runtime_endpoint_client_runs_a_program(url):
    """Our DSL's RuntimeEndpoint (the same contract as sglang.RuntimeEndpoint) against the server."""
    import sgl_jupyter.lang as sgl

    backend = sgl.RuntimeEndpoint(url)
    try:
        @sgl.function
        def qa(s, q):
            s += sgl.user(q)
            s += sgl.assistant(sgl.gen("a", max_tokens=8, temperature=0))
            s += sgl.user("Is that right?")
            s += sgl.assistant(sgl.select("b", choices=["yes", "no"]))

        state = qa.run(q="What is 1+1?", backend=backend)
        assert isinstance(state["a"], str) and state["b"] in ("yes", "no")
    finally:
        backend.shutdown()


def test_model_and_server_info(client, engine):
    info = client.get("/get_model_info").json()
    assert info["model_path"] == engine.args.model_path and info["is_generation"] is True
    server = client.get("/get_server_info").json()
    assert server["kv"]["total"] == engine.kv_pool.size
    assert server["max_context_length"] == engine.max_context


def test_flush_cache_empties_the_prefix_cache(client, engine):
    client.post("/generate", json={"text": "Some text to cache", "sampling_params": {"max_new_tokens": 1}})
    assert_kv_back_to_full(engine)
    res = client.post("/flush_cache")
    assert res.status_code == 200 and "Cache flushed" in res.text
    assert engine.get_server_info()["kv"]["evictable"] == 0
    assert client.get("/flush_cache").status_code == 200  # SGLang accepts GET too


def test_abort_request_ends_a_running_generation(client, engine):
    import threading

    out = {}

    def run():
        out["res"] = client.post("/generate", json={"text": "Tell me a long story.", "rid": "abort-me",
                                                    "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True}})

    t = threading.Thread(target=run)
    t.start()
    import time

    deadline = time.monotonic() + 30
    while engine.get_server_info()["num_running_reqs"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.post("/abort_request", json={"rid": "abort-me"}).status_code == 200
    t.join(30)
    meta = out["res"].json()["meta_info"]
    assert meta["finish_reason"]["type"] == "abort" and meta["completion_tokens"] < 2000
    assert_kv_back_to_full(engine, client)


def test_health_endpoints(client):
    assert client.get("/health").status_code == 200
    assert client.get("/health_generate").status_code == 200


@pytest.mark.parametrize("path", ["/start_profile", "/encode", "/concate_and_append_request"])
def test_unsupported_sglang_endpoints_answer_501_cleanly(client, path):
    res = client.post(path, json={})
    assert res.status_code == 501
    assert "not supported" in res.json()["error"]["message"]


@pytest.mark.parametrize("body, fragment", [
    ({"sampling_params": {"max_new_tokens": 4}}, "text"),
    ({"text": "hi", "input_ids": [1, 2]}, "exactly one"),
    ({"text": "hi", "sampling_params": {"temperature": -1}}, "temperature"),
    ({"text": "hi", "sampling_params": {"stop_regex": "x+"}}, "stop_regex"),
    ({"text": "hi", "image_data": "http://x/y.png"}, "image_data"),
    ({"input_ids": [10 ** 9]}, "input_ids"),
    ({"text": "hi", "stream": True, "sampling_params": {"n": 2}}, "n=1"),
])
def test_generate_rejects_bad_requests_with_a_readable_message(client, body, fragment):
    res = client.post("/generate", json=body)
    assert res.status_code == 400, res.text
    assert fragment in res.json()["error"]["message"]
