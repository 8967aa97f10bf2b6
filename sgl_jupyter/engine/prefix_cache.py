"""The prefix-cache interface the scheduler talks to, and the no-reuse implementation
(the "vLLM without prefix caching" baseline): the scheduler never knows which one it has."""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

EMPTY_SLOTS = torch.empty(0, dtype=torch.int64)


@dataclass
class PrefixMatch:
    slots: torch.Tensor  # KV slots of the matched prefix (int64, CPU)
    node: Any  # opaque handle for lock/unlock

    @property
    def length(self) -> int:
        return int(self.slots.numel())


class PrefixCache(ABC):
    """A store of KV slots keyed by token-id prefixes.

    Ownership rule: slots returned by ``match_prefix`` belong to the cache; a request that uses them
    must ``lock`` the node until it no longer reads them. Slots handed to ``insert`` become the
    cache's, except the first ``returned`` ones, which duplicated what the cache already had: the
    caller frees those.
    """

    reuses_prefixes = True  # False: matches are always empty and inserted slots are never kept

    def __init__(self, free_slots: Callable[[torch.Tensor], None]):
        self.free_slots = free_slots
        self.hit_tokens = 0
        self.miss_tokens = 0
        self.version = 0

    @abstractmethod
    def match_prefix(self, key: list[int]) -> PrefixMatch: ...

    @abstractmethod
    def insert(self, key: list[int], slots: torch.Tensor) -> int: ...

    @abstractmethod
    def lock(self, node: Any) -> None: ...

    @abstractmethod
    def unlock(self, node: Any) -> None: ...

    @abstractmethod
    def evict(self, num_tokens: int) -> int: ...

    @property
    @abstractmethod
    def evictable_size(self) -> int: ...

    @property
    @abstractmethod
    def protected_size(self) -> int: ...

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def snapshot(self, max_nodes: int = 500) -> dict: ...

    def record(self, match: PrefixMatch, total_tokens: int) -> None:
        """Count a request's admission: ``match.length`` of ``total_tokens`` came from the cache."""
        self.hit_tokens += match.length
        self.miss_tokens += total_tokens - match.length

    @property
    def hit_rate(self) -> float:
        total = self.hit_tokens + self.miss_tokens
        return self.hit_tokens / total if total else 0.0

    def stats(self) -> dict:
        return {"hit_tokens": self.hit_tokens, "miss_tokens": self.miss_tokens, "hit_rate": self.hit_rate,
                "evictable_tokens": self.evictable_size, "protected_tokens": self.protected_size}


class NoPrefixCache(PrefixCache):
    """Caches nothing: every request computes its whole prompt (radix cache disabled)."""

    reuses_prefixes = False

    def match_prefix(self, key: list[int]) -> PrefixMatch:
        return PrefixMatch(EMPTY_SLOTS, None)

    def insert(self, key: list[int], slots: torch.Tensor) -> int:
        return len(key)  # nothing kept: the caller frees every slot

    def lock(self, node: Any) -> None:
        pass

    def unlock(self, node: Any) -> None:
        pass

    def evict(self, num_tokens: int) -> int:
        return 0

    @property
    def evictable_size(self) -> int:
        return 0

    @property
    def protected_size(self) -> int:
        return 0

    def reset(self) -> None:
        self.version += 1

    def snapshot(self, max_nodes: int = 500) -> dict:
        return {"nodes": [{"id": 0, "parent": -1, "tokens": 0, "text": "", "ref": 0,
                           "last_access": time.time(), "hits": 0}],
                "total_tokens": 0, "evictable_tokens": 0, "hit_tokens": self.hit_tokens,
                "miss_tokens": self.miss_tokens, "hit_rate": self.hit_rate, "version": self.version,
                "disabled": True}


def make_prefix_cache(disable_radix_cache: bool, free_slots: Callable[[torch.Tensor], None],
                      decode: Optional[Callable[[list[int]], str]] = None) -> PrefixCache:
    if disable_radix_cache:
        return NoPrefixCache(free_slots)
    from .radix_cache import RadixCache

    return RadixCache(free_slots, decode=decode)
