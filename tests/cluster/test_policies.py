"""Routing policies on a real prefix tree (pure Python: no Ray, no model)."""
from __future__ import annotations

import pytest

from sgl_jupyter.cluster.aggregate import merge_metrics, merge_server_info
from sgl_jupyter.cluster.policies import CacheAware, LeastLoad, PrefixTree, RoundRobin, make_policy
from sgl_jupyter.cluster.router import routing_key


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_tree_matches_longest_prefix_and_splits_edges():
    tree = PrefixTree()
    tree.insert("hello world")
    tree.insert("hello there")
    assert tree.match("hello world, again") == len("hello world")
    assert tree.match("hello the") == len("hello the")
    assert tree.match("help") == 3
    assert tree.match("nothing") == 0
    assert tree.size == len("hello world") + len("there")
    tree.insert("你好，世界")  # characters, not bytes
    assert tree.match("你好，朋友") == 3


def test_tree_evicts_by_size_least_recently_used_first():
    clock = Clock()
    tree = PrefixTree(max_chars=30, clock=clock)
    tree.insert("a" * 12)
    clock.t = 1
    tree.insert("b" * 12)
    clock.t = 2
    tree.match("a" * 12)  # touch a: b is now the least recently used
    clock.t = 3
    tree.insert("c" * 12)  # 36 chars > 30: one leaf must go
    assert tree.size == 24
    assert tree.match("a" * 12) == 12 and tree.match("c" * 12) == 12
    assert tree.match("b" * 12) == 0


def test_tree_evicts_by_age():
    clock = Clock()
    tree = PrefixTree(max_age_s=10, clock=clock)
    tree.insert("old prompt")
    clock.t = 20
    tree.insert("new prompt")
    assert tree.match("old prompt") == 0 and tree.match("new prompt") == len("new prompt")
    assert tree.size == len("new prompt")


def test_cache_aware_follows_the_longest_prefix():
    policy = CacheAware(2)
    doc_a, doc_b = "system. " + "A" * 400, "system. " + "B" * 400
    first_a = policy.choose(doc_a, [0, 0], [0, 1]).replica
    first_b = policy.choose(doc_b, [1 if first_a == 0 else 0, 1 if first_a == 1 else 0], [0, 1]).replica
    assert first_a != first_b  # new prompts spread out (least loaded)
    for turn in range(3):
        d = policy.choose(doc_a + f" question {turn}", [0, 0], [0, 1])
        assert d.replica == first_a and d.matched_chars >= len(doc_a) and not d.imbalance_fallback
        d = policy.choose(doc_b + f" question {turn}", [0, 0], [0, 1])
        assert d.replica == first_b


def test_cache_aware_falls_back_to_least_loaded_when_imbalanced():
    policy = CacheAware(2, balance_abs=4, balance_rel=1.5)
    text = "shared prefix " * 50 + "home's own tail " * 20
    home = policy.choose(text, [0, 0], [0, 1]).replica
    other = 1 - home
    loads = [0, 0]
    loads[home] = 20
    d = policy.choose("shared prefix " * 50 + "a new user", loads, [0, 1])
    assert d.replica == other and d.imbalance_fallback
    loads[home] = 3  # within the threshold: the longest match wins again
    assert policy.choose(text + "again", loads, [0, 1]).replica == home


def test_cache_aware_skips_unhealthy_and_forgets():
    policy = CacheAware(2)
    text = "prefix " * 100
    home = policy.choose(text, [0, 0], [0, 1]).replica
    assert policy.choose(text, [0, 0], [1 - home]).replica == 1 - home
    policy.forget()
    assert all(t.size == 0 for t in policy.trees)


def test_round_robin_and_least_load():
    rr = RoundRobin(3)
    assert [rr.choose("", [0, 0, 0], [0, 1, 2]).replica for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    assert {rr.choose("", [0, 0, 0], [0, 2]).replica for _ in range(4)} == {0, 2}
    assert LeastLoad(3).choose("", [5, 1, 3], [0, 1, 2]).replica == 1
    assert LeastLoad(3).choose("", [5, 1, 3], [0, 2]).replica == 2
    with pytest.raises(ValueError, match="round-robin"):
        make_policy("random", 2)


def test_routing_key_reads_every_api_shape():
    assert routing_key("/generate", b'{"text": "abc"}') == "abc"
    assert routing_key("/generate", b'{"input_ids": [1, 2, 3]}') == "1 2 3"
    assert routing_key("/v1/completions", b'{"prompt": ["first", "second"]}') == "first"
    key = routing_key("/v1/chat/completions", '{"messages": [{"role": "system", "content": "be brief"}, '
                      '{"role": "user", "content": [{"type": "text", "text": "你好"}]}]}'.encode())
    assert key == "<system>be brief\n<user>你好"
    assert routing_key("/generate", b"not json") == ""


def test_merge_server_info_and_metrics():
    a = {"num_running_reqs": 2, "prompt_tokens_total": 100, "cached_tokens_total": 50, "kv": {"used": 10},
         "cache_hit_rate": 0.5, "model_path": "m"}
    b = {"num_running_reqs": 1, "prompt_tokens_total": 100, "cached_tokens_total": 90, "kv": {"used": 5},
         "cache_hit_rate": 0.9, "model_path": "m"}
    merged = merge_server_info([a, None, b], [{"index": i} for i in range(3)], {"policy": "cache-aware"})
    assert merged["num_running_reqs"] == 3 and merged["kv"] == {"used": 15}
    assert merged["cache_hit_rate"] == pytest.approx(0.7) and merged["num_replicas"] == 3
    text = ("# HELP sglang_request_success_total x\n# TYPE sglang_request_success_total counter\n"
            'sglang_request_success_total{model_name="m"} %s\n'
            "# HELP sglang_cache_hit_rate x\n# TYPE sglang_cache_hit_rate gauge\n"
            'sglang_cache_hit_rate{model_name="m"} %s\n')
    out = merge_metrics([text % (3, 0.5), text % (4, 0.9)])
    assert 'sglang_request_success_total{model_name="m"} 7.0' in out
    assert 'sglang_cache_hit_rate{model_name="m"} 0.7' in out
    assert out.index("# TYPE sglang_request_success_total") < out.index("sglang_request_success_total{")
