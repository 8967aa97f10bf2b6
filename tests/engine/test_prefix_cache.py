"""Radix cache: reuse across requests, same outputs on and off, and the tree's bookkeeping."""
from __future__ import annotations

import pytest
import torch

from sgl_jupyter.engine.prefix_cache import NoPrefixCache
from sgl_jupyter.engine.radix_cache import RadixCache
from tests.conftest import assert_no_leak

SYSTEM = "You are a meticulous assistant. " * 20


@pytest.fixture(scope="module")
def engine_no_radix(model_path):
    from sgl_jupyter import Engine

    eng = Engine(model_path, device="cpu", max_total_tokens=8192, disable_radix_cache=True)
    yield eng
    eng.shutdown()


def test_shared_prefix_is_reused(engine):
    engine.flush_cache()
    a = engine.generate(SYSTEM + "Question: what is red?", {"max_new_tokens": 4, "temperature": 0})
    before = engine.get_server_info()["extend_tokens_total"]
    b = engine.generate(SYSTEM + "Question: what is blue?", {"max_new_tokens": 4, "temperature": 0})
    computed = engine.get_server_info()["extend_tokens_total"] - before
    assert a["meta_info"]["cached_tokens"] == 0
    assert b["meta_info"]["cached_tokens"] > 100
    assert computed == b["meta_info"]["prompt_tokens"] - b["meta_info"]["cached_tokens"]
    assert computed < 20
    assert_no_leak(engine)


def test_outputs_equal_with_radix_on_and_off(engine, engine_no_radix):
    prompts = [SYSTEM + q for q in ("Name a colour.", "Name a city.", "Name an animal.", "中文问题:你好吗?")]
    params = {"max_new_tokens": 12, "temperature": 0}
    engine.generate(prompts[0], params)  # warm the tree so later prompts hit it
    on = [engine.generate(p, params)["output_ids"] for p in prompts]
    off = [engine_no_radix.generate(p, params)["output_ids"] for p in prompts]
    assert on == off
    info = engine_no_radix.get_server_info()
    assert info["cache"]["hit_tokens"] == 0 and info["kv"]["evictable"] == 0
    assert_no_leak(engine_no_radix)


def test_snapshot_describes_the_tree(engine):
    engine.flush_cache()
    engine.generate([SYSTEM + "A?", SYSTEM + "B?"], {"max_new_tokens": 2, "temperature": 0})
    engine.generate(SYSTEM + "C?", {"max_new_tokens": 2, "temperature": 0})
    snap = engine.cache_snapshot()
    nodes = {n["id"]: n for n in snap["nodes"]}
    assert nodes[0]["parent"] == -1
    assert len(nodes) >= 4  # root, shared prefix, and branches
    assert sum(n["tokens"] for n in snap["nodes"]) == snap["total_tokens"]
    assert all(n["ref"] == 0 for n in snap["nodes"])
    assert any("meticulous" in n["text"] for n in snap["nodes"])
    assert snap["hit_rate"] > 0


def test_flush_cache_empties_the_tree(engine):
    engine.generate(SYSTEM + "D?", {"max_new_tokens": 2, "temperature": 0})
    assert engine.flush_cache() is True
    info = engine.get_server_info()
    assert info["kv"]["free"] == info["kv"]["total"]


def _slots(*xs):
    return torch.tensor(xs, dtype=torch.int64)


def test_radix_insert_match_split_and_evict():
    freed: list[int] = []
    cache = RadixCache(lambda s: freed.extend(s.tolist()))
    assert cache.insert([1, 2, 3, 4], _slots(10, 11, 12, 13)) == 0
    assert cache.insert([1, 2, 5], _slots(20, 21, 22)) == 2  # first two duplicate: caller frees 20, 21
    m = cache.match_prefix([1, 2, 3, 9])
    assert m.slots.tolist() == [10, 11, 12]
    assert cache.evictable_size == 5
    cache.lock(m.node)
    assert cache.protected_size == 3 and cache.evictable_size == 2
    assert cache.evict(10) == 2  # only the unlocked leaves: [4] and [5]
    assert sorted(freed) == [13, 22]
    cache.unlock(m.node)
    assert cache.evict(10) == 3 and cache.evictable_size == 0


def test_radix_evicts_least_recently_used_first():
    freed: list[int] = []
    cache = RadixCache(lambda s: freed.extend(s.tolist()))
    cache.insert([1, 2], _slots(1, 2))
    cache.insert([3, 4], _slots(3, 4))
    cache.match_prefix([1, 2])  # touch: [3, 4] is now the oldest
    cache.evict(1)
    assert freed == [3, 4]


def test_no_prefix_cache_keeps_nothing():
    cache = NoPrefixCache(lambda s: None)
    assert cache.insert([1, 2, 3], _slots(1, 2, 3)) == 3
    assert cache.match_prefix([1, 2, 3]).length == 0
