"""200 concurrent requests with aborts and preemption on a tiny KV pool: outputs equal solo runs,
and afterwards no slot is leaked and no tree node is referenced."""
from __future__ import annotations

import random
import threading
import time

import pytest

from tests.conftest import assert_no_leak

TOPICS = ["cats", "the sea", "Paris", "numbers", "music", "日本", "code", "rain", "trees", "stars",
          "coffee", "trains", "北京", "books", "snow", "robots"]
MAX_NEW = 16


def _prompt(i: int) -> str:
    return f"Write one sentence about {TOPICS[i % len(TOPICS)]}:" + " please" * (i % 5)


@pytest.fixture(scope="module")
def tiny_engine(model_path):
    from sgl_jupyter import Engine

    eng = Engine(model_path, device="cpu", max_total_tokens=300, max_running_requests=48,
                 chunked_prefill_size=256)
    yield eng
    eng.shutdown()


def test_200_concurrent_requests_with_aborts_and_preemption(tiny_engine, engine):
    distinct = sorted({_prompt(i) for i in range(200)})
    solo = {p: engine.generate(p, {"max_new_tokens": MAX_NEW, "temperature": 0, "ignore_eos": True})["output_ids"]
            for p in distinct}
    rng = random.Random(0)
    lengths = [rng.randint(4, MAX_NEW) for _ in range(200)]
    to_abort = set(rng.sample(range(200), 30))
    results: dict[int, dict] = {}

    def run(i: int) -> None:
        rid = f"stress-{i}"
        if i in to_abort:
            chunks = []
            for chunk in tiny_engine.generate(_prompt(i), {"max_new_tokens": 40, "temperature": 0,
                                                           "ignore_eos": True}, stream=True, rid=rid):
                chunks.append(chunk)
                if len(chunks) == 2:
                    tiny_engine.abort(rid)
            results[i] = chunks[-1]
        else:
            results[i] = tiny_engine.generate(_prompt(i), {"max_new_tokens": lengths[i], "temperature": 0,
                                                            "ignore_eos": True}, rid=rid)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    deadline = time.time() + 600
    for t in threads:
        t.join(timeout=max(deadline - time.time(), 1))
    assert len(results) == 200
    for i, res in results.items():
        if i in to_abort:
            assert res["meta_info"]["finish_reason"]["type"] == "abort"
            continue
        ref = solo[_prompt(i)][:lengths[i]]
        assert res["output_ids"] == ref[:len(res["output_ids"])], i
        assert len(res["output_ids"]) == len(ref), i
    info = tiny_engine.get_server_info()
    assert info["num_retracted_reqs"] > 0, "the test must exercise preemption"
    assert_no_leak(tiny_engine)
    snap = tiny_engine.cache_snapshot()
    assert all(n["ref"] == 0 for n in snap["nodes"])


def test_preempted_requests_resume_with_identical_output(model_path, engine):
    from sgl_jupyter import Engine

    prompts = [f"Tell me about the number {i}." for i in range(6)]
    params = {"max_new_tokens": 30, "temperature": 0, "ignore_eos": True}
    solo = [engine.generate(p, params)["output_ids"] for p in prompts]
    with Engine(model_path, device="cpu", max_total_tokens=120, disable_radix_cache=True) as small:
        outs = small.generate(prompts, params)
        assert small.get_server_info()["num_retracted_reqs"] > 0
        assert_no_leak(small)
    assert [o["output_ids"] for o in outs] == solo
