"""Which replica gets a request: cache-aware (SGLang router's policy), round-robin, least-load.

Cache-aware keeps, per replica, an approximate radix tree of the prompts routed there (characters,
as SGLang's router does: no tokenizer in the router). The replica whose tree shares the longest prefix
with a new prompt most likely holds that prefix in its KV (radix) cache. Load wins over cache when the
replicas' in-flight counts differ by more than a threshold, so one hot prefix cannot pile every request
onto one replica. The trees forget least-recently-used leaves past a size cap and entries older than a
maximum age; they are a guess about the replicas' caches, never a promise.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

POLICIES = ("cache-aware", "round-robin", "least-load")


@dataclass
class _Node:
    key: str = ""
    children: dict[str, "_Node"] = field(default_factory=dict)
    parent: Optional["_Node"] = None
    last_access: float = 0.0


class PrefixTree:
    """A character radix tree of one replica's routed prompts; ``size`` is the characters stored."""

    def __init__(self, max_chars: int = 2_000_000, max_age_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic):
        self.root = _Node()
        self.size = 0
        self.max_chars, self.max_age_s, self.clock = max_chars, max_age_s, clock
        self._last_sweep = clock()

    def match(self, text: str) -> int:
        """Characters of ``text``'s longest prefix stored here (touching the path: it was just used)."""
        node, i, now = self.root, 0, self.clock()
        while i < len(text):
            child = node.children.get(text[i])
            if child is None:
                break
            n = _common(child.key, text, i)
            child.last_access = now
            i += n
            if n < len(child.key):
                break
            node = child
        return i

    def insert(self, text: str) -> None:
        node, i, now = self.root, 0, self.clock()
        while i < len(text):
            child = node.children.get(text[i])
            if child is None:
                node.children[text[i]] = _Node(text[i:], parent=node, last_access=now)
                self.size += len(text) - i
                break
            n = _common(child.key, text, i)
            if n < len(child.key):  # split the edge at the divergence
                mid = _Node(child.key[:n], parent=node, last_access=now)
                child.key = child.key[n:]
                child.parent = mid
                mid.children[child.key[0]] = child
                node.children[mid.key[0]] = mid
                child = mid
            child.last_access = now
            node, i = child, i + n
        if self.size > self.max_chars or now - self._last_sweep > 1.0:  # a full sweep at most once a second
            self.evict()

    def evict(self) -> None:
        """Drop leaves older than ``max_age_s``, then least-recently-used leaves while over ``max_chars``."""
        self._last_sweep = self.clock()
        cutoff = self._last_sweep - self.max_age_s
        leaves = sorted(self._leaves(), key=lambda n: n.last_access)
        while leaves and (leaves[0].last_access < cutoff or self.size > self.max_chars):
            leaf = leaves.pop(0)
            parent = leaf.parent
            del parent.children[leaf.key[0]]
            self.size -= len(leaf.key)
            if parent is not self.root and not parent.children:
                leaves.append(parent)
                leaves.sort(key=lambda n: n.last_access)

    def clear(self) -> None:
        self.root, self.size = _Node(), 0

    def _leaves(self) -> list[_Node]:
        out, stack = [], list(self.root.children.values())
        while stack:
            n = stack.pop()
            if n.children:
                stack.extend(n.children.values())
            else:
                out.append(n)
        return out


def _common(key: str, text: str, start: int) -> int:
    n = min(len(key), len(text) - start)
    i = 0
    while i < n and key[i] == text[start + i]:
        i += 1
    return i


@dataclass
class Decision:
    replica: int
    matched_chars: int = 0
    imbalance_fallback: bool = False


class Policy:
    """Chooses among ``healthy`` replica indices given their in-flight ``loads``."""

    name = "base"

    def __init__(self, num_replicas: int):
        self.num_replicas = num_replicas

    def choose(self, text: str, loads: Sequence[int], healthy: Sequence[int]) -> Decision:
        raise NotImplementedError

    def forget(self, replica: Optional[int] = None) -> None:
        """The replica's cache is gone (flushed or restarted)."""


class RoundRobin(Policy):
    name = "round-robin"

    def __init__(self, num_replicas: int):
        super().__init__(num_replicas)
        self._next = 0

    def choose(self, text: str, loads: Sequence[int], healthy: Sequence[int]) -> Decision:
        for _ in range(self.num_replicas):
            i = self._next % self.num_replicas
            self._next += 1
            if i in healthy:
                return Decision(i)
        return Decision(healthy[0])


class LeastLoad(Policy):
    name = "least-load"

    def choose(self, text: str, loads: Sequence[int], healthy: Sequence[int]) -> Decision:
        return Decision(min(healthy, key=lambda i: (loads[i], i)))


class CacheAware(Policy):
    """Longest matched prefix wins; least-loaded when loads differ by more than ``balance_abs`` requests
    and by a factor over ``balance_rel`` (SGLang router's two thresholds), or when no replica matches
    more than ``cache_threshold`` of the prompt (then the replica with the smallest tree and load)."""

    name = "cache-aware"

    def __init__(self, num_replicas: int, balance_abs: int = 8, balance_rel: float = 1.5,
                 cache_threshold: float = 0.5, max_chars: int = 2_000_000, max_age_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(num_replicas)
        self.balance_abs, self.balance_rel, self.cache_threshold = balance_abs, balance_rel, cache_threshold
        self.trees = [PrefixTree(max_chars, max_age_s, clock) for _ in range(num_replicas)]

    def choose(self, text: str, loads: Sequence[int], healthy: Sequence[int]) -> Decision:
        matches = {i: self.trees[i].match(text) for i in healthy}
        best = max(healthy, key=lambda i: (matches[i], -loads[i], -i))
        lo, hi = min(loads[i] for i in healthy), max(loads[i] for i in healthy)
        if hi - lo > self.balance_abs and hi > lo * self.balance_rel:
            least = min(healthy, key=lambda i: (loads[i], i))
            decision = Decision(least, matches[least], imbalance_fallback=least != best)
        elif text and matches[best] > self.cache_threshold * len(text):
            decision = Decision(best, matches[best])
        else:
            least = min(healthy, key=lambda i: (loads[i], self.trees[i].size, i))
            decision = Decision(least, matches[least])
        self.trees[decision.replica].insert(text)
        return decision

    def forget(self, replica: Optional[int] = None) -> None:
        for i, tree in enumerate(self.trees):
            if replica is None or i == replica:
                tree.clear()


def make_policy(name: str, num_replicas: int, **kwargs) -> Policy:
    classes = {"cache-aware": CacheAware, "round-robin": RoundRobin, "least-load": LeastLoad}
    if name not in classes:
        raise ValueError(f"unknown router policy {name!r}; choose from: {', '.join(POLICIES)}")
    return classes[name](num_replicas, **kwargs) if name == "cache-aware" else classes[name](num_replicas)
