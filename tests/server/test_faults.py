"""Hard failures: streams cut mid-way, clients that give up, floods beyond capacity, malformed and
out-of-range requests, huge prompts. Every one is answered (4xx/503) or aborted; afterwards no KV slot
or request row is leaked and the next request is still correct."""
from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from sgl_jupyter.server import ServerThread

from .conftest import assert_kv_back_to_full, wait_idle

GREEDY = {"max_new_tokens": 8, "temperature": 0}


def assert_still_correct(client: httpx.Client, engine) -> None:
    assert client.get("/health").status_code == 200
    res = client.post("/generate", json={"text": "The capital of France is", "sampling_params": GREEDY})
    assert res.status_code == 200
    assert res.json()["text"] == engine.generate("The capital of France is", GREEDY)["text"]


def aborted_total(server: ServerThread) -> float:
    return server.app.state.sgl.metrics.value("sglang_request_aborted_total")


async def _cut_stream(ac: httpx.AsyncClient, i: int, rng: random.Random) -> int:
    """Open a long stream and walk away after a few events (some before the first token)."""
    keep = rng.choice([0, 1, 2, 3, 5])
    path, body = (("/v1/completions", {"prompt": f"Story number {i}:", "max_tokens": 400, "stream": True,
                                       "ignore_eos": True}) if i % 2 else
                  ("/generate", {"text": f"Story number {i}:", "stream": True,
                                 "sampling_params": {"max_new_tokens": 400, "ignore_eos": True}}))
    seen = 0
    async with ac.stream("POST", path, json=body) as res:
        assert res.status_code == 200
        async for line in res.aiter_lines():
            if line.startswith("data:"):
                seen += 1
                if seen > keep:
                    break
    return seen  # leaving the block closes the connection mid-body


def test_100_streams_cut_midway_are_aborted_and_free_their_slots(server, client, engine):
    before = aborted_total(server)

    async def main() -> list[int]:
        rng = random.Random(0)
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as ac:
            return await asyncio.gather(*[_cut_stream(ac, i, rng) for i in range(100)])

    seen = asyncio.run(main())
    assert len(seen) == 100
    wait_idle(engine)
    assert aborted_total(server) - before >= 100
    assert_kv_back_to_full(engine, client)
    assert_still_correct(client, engine)


def test_clients_that_time_out_on_non_streaming_requests_are_aborted(server, client, engine):
    before = aborted_total(server)

    async def main() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=1.0) as ac:
            async def give_up(i: int) -> None:
                with pytest.raises(httpx.ReadTimeout):
                    await ac.post("/v1/chat/completions", json={
                        "messages": [{"role": "user", "content": f"Write essay {i}."}], "max_tokens": 3000,
                        "ignore_eos": True})
            await asyncio.gather(*[give_up(i) for i in range(10)])

    asyncio.run(main())
    wait_idle(engine)
    assert aborted_total(server) - before >= 10
    assert_kv_back_to_full(engine, client)


@pytest.fixture(scope="module")
def small_server(engine):
    """A second server on the same engine with tight limits: 8 queued sequences beyond the engine's
    running batch, 64 KiB bodies."""
    srv = ServerThread(engine, port=0, max_queued_requests=8, max_body_bytes=64 * 1024).start()
    yield srv
    srv.stop()


def test_500_requests_beyond_capacity_get_503_with_retry_after_and_never_crash(small_server, client, engine):
    capacity = small_server.app.state.sgl.admission.limit
    assert capacity == engine.max_running + 8

    async def main() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=capacity + 500)
        async with httpx.AsyncClient(base_url=small_server.url, timeout=300, limits=limits) as ac:
            reqs = [ac.post("/v1/completions", json={"prompt": f"Item {i}:", "max_tokens": 3, "temperature": 0})
                    for i in range(capacity + 500)]
            return await asyncio.gather(*reqs)

    responses = asyncio.run(main())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, sorted(set(codes))
    rejected = [r for r in responses if r.status_code == 503]
    assert len(rejected) >= 500 - 8  # the flood is far beyond capacity: most are turned away at once
    for r in rejected:
        assert r.headers["Retry-After"].isdigit()
        assert r.json()["error"]["type"] == "service_unavailable_error"
    for r in responses:
        if r.status_code == 200:
            assert r.json()["usage"]["completion_tokens"] >= 1
    assert small_server.running
    assert_kv_back_to_full(engine, client)
    assert_still_correct(client, engine)


def test_engine_queue_limit_is_a_503_too(url, client, engine):
    """The engine's own --max-queued-requests check (EngineOverloadedError) maps to 503 + Retry-After."""
    previous = engine.args.max_queued_requests
    engine.args.max_queued_requests = 1
    try:
        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=120) as ac:
                return await asyncio.gather(*[ac.post("/generate", json={
                    "text": f"Number {i}", "sampling_params": {"max_new_tokens": 2}}) for i in range(40)])

        codes = [r.status_code for r in asyncio.run(main())]
    finally:
        engine.args.max_queued_requests = previous
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes


HUGE = "word " * 20000  # ~20k tokens: more than the 8192-token context


@pytest.mark.parametrize("path, body, status, fragment", [
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": ', 400, "not valid JSON"),
    ("/v1/completions", b"[1, 2, 3]", 400, ""),
    ("/v1/completions", b"", 400, ""),
    ("/generate", b"\xff\xfe garbage", 400, ""),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": 123}, 400, "prompt"),
    ("/v1/completions", {"max_tokens": 4}, 400, "prompt"),
    ("/v1/completions", {"prompt": "hi", "stop": [1, 2]}, 400, "stop"),
    ("/v1/completions", {"prompt": "hi", "n": "two"}, 400, "n"),
    ("/v1/chat/completions", {"messages": "hello"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, 400, "text parts"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "tools": [{"type": "function"}]}, 400, "tool"),
    ("/generate", {"text": 5}, 400, "text"),
    ("/generate", {"text": "hi", "sampling_params": "fast"}, 400, "sampling_params"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 10 ** 9}, 400, "context length"),
    ("/v1/completions", {"prompt": "hi", "n": 0}, 400, "n"),
    ("/v1/completions", {"prompt": "hi", "n": 1000}, 400, "n"),
    ("/v1/completions", {"prompt": "hi", "temperature": 1e9}, 400, "temperature"),
    ("/v1/completions", {"prompt": "hi", "top_p": 1.5}, 400, "top_p"),
    ("/v1/completions", {"prompt": "hi", "top_k": -5}, 400, "top_k"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 50}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "frequency_penalty": 5}, 400, "frequency_penalty"),
    ("/v1/completions", {"prompt": "hi", "min_tokens": 10, "max_tokens": 2}, 400, "min_new_tokens"),
    ("/v1/completions", {"prompt": "hi", "stream": True, "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": ""}, 400, "empty"),
    ("/v1/completions", {"prompt": [10 ** 9]}, 400, "input_ids"),
    ("/v1/completions", {"prompt": HUGE, "max_tokens": 1}, 400, "context length"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": HUGE}], "stream": True}, 400, "context"),
    ("/generate", {"input_ids": list(range(1, 10001)), "sampling_params": {"max_new_tokens": 1}}, 400, "context"),
    ("/generate", {"text": "hi", "return_logprob": True, "logprob_start_len": 50}, 400, "logprob_start_len"),
    ("/generate", {"text": "hi", "top_logprobs_num": 1000, "return_logprob": True}, 400, "top_logprobs_num"),
    ("/generate", {"text": "hi", "sampling_params": {"json_schema": "{not json"}}, 400, ""),
    ("/generate", {"text": "hi", "sampling_params": {"regex": "(unclosed"}}, 400, ""),
])
def test_bad_requests_are_answered_4xx_in_openai_shape(client, path, body, status, fragment):
    if isinstance(body, bytes):
        res = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        res = client.post(path, json=body)
    assert res.status_code == status, res.text[:500]
    err = res.json()["error"]
    assert set(err) >= {"message", "type", "code"} and err["code"] == status
    assert fragment in err["message"], err["message"]


def test_unknown_route_and_wrong_method(client):
    assert client.get("/v2/nothing").json()["error"]["code"] == 404
    res = client.get("/v1/completions")
    assert res.status_code == 405 and res.json()["error"]["code"] == 405


def test_body_over_the_limit_is_413(small_server):
    res = httpx.post(small_server.url + "/v1/completions", json={"prompt": "x" * 100_000}, timeout=30)
    assert res.status_code == 413
    assert "larger than" in res.json()["error"]["message"]


def test_after_all_faults_nothing_leaked_and_answers_are_right(client, engine):
    assert_kv_back_to_full(engine, client)
    assert_still_correct(client, engine)
