"""ServerThread (what %sgl_serve uses): serves an engine that keeps running in the caller's process,
shares its KV cache with in-process calls, and stops cleanly even with a stream open."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from sgl_jupyter.server import PortInUseError, ServerThread, serve_in_thread

from .conftest import assert_kv_back_to_full


def test_http_and_in_process_share_the_prefix_cache(engine, client):
    prompt = "A shared system prompt that both paths reuse. " * 4
    engine.generate(prompt + "First?", {"max_new_tokens": 1})  # in-process fills the radix cache
    meta = client.post("/generate", json={"text": prompt + "Second?", "sampling_params": {
        "max_new_tokens": 1}}).json()["meta_info"]
    assert meta["cached_tokens"] >= len(engine.tokenizer.encode(prompt, add_special_tokens=False)) - 2


def test_stop_with_an_open_stream_aborts_it_and_returns(engine, client):
    srv = serve_in_thread(engine, port=0)
    got_first = threading.Event()

    def stream() -> None:
        try:
            with httpx.stream("POST", srv.url + "/generate", timeout=60, json={
                    "text": "Tell a very long story.", "stream": True,
                    "sampling_params": {"max_new_tokens": 3000, "ignore_eos": True}}) as res:
                for line in res.iter_lines():
                    if line.startswith("data:"):
                        got_first.set()
        except httpx.HTTPError:
            pass  # the server went away: expected

    t = threading.Thread(target=stream)
    t.start()
    assert got_first.wait(60)
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 15
    assert not srv.running
    t.join(30)
    assert_kv_back_to_full(engine, client)  # the engine outlives its server
    assert engine.generate("Hi", {"max_new_tokens": 2})["meta_info"]["completion_tokens"] == 2


def test_a_taken_port_is_reported_before_serving(engine, server):
    with pytest.raises(PortInUseError) as exc:
        ServerThread(engine, port=server.port).start()
    assert str(server.port) in str(exc.value) and "lsof -i" in str(exc.value)
