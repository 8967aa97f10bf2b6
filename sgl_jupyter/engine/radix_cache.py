"""Radix tree over token ids whose nodes own KV slots: prefix match, insert, LRU eviction of
unreferenced leaves, and a snapshot for the tree widget."""
from __future__ import annotations

import heapq
import itertools
import time
from typing import Callable, Optional

import torch

from .prefix_cache import EMPTY_SLOTS, PrefixCache, PrefixMatch

_PREVIEW_TOKENS = 24


class Node:
    __slots__ = ("id", "key", "slots", "parent", "children", "lock_ref", "last_access", "hits", "_preview")

    def __init__(self, node_id: int, key: list[int], slots: torch.Tensor, parent: Optional["Node"]):
        self.id = node_id
        self.key = key
        self.slots = slots
        self.parent = parent
        self.children: dict[int, Node] = {}
        self.lock_ref = 0
        self.last_access = time.monotonic()
        self.hits = 0
        self._preview: Optional[str] = None

    def __lt__(self, other: "Node") -> bool:  # heap order: least recently used first
        return self.last_access < other.last_access


def _common_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class RadixCache(PrefixCache):
    def __init__(self, free_slots: Callable[[torch.Tensor], None],
                 decode: Optional[Callable[[list[int]], str]] = None):
        super().__init__(free_slots)
        self.decode = decode
        self._ids = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        self.root = Node(0, [], EMPTY_SLOTS, None)
        self.root.lock_ref = 1  # never evicted
        self._evictable = 0
        self._protected = 0
        self.version = getattr(self, "version", 0) + 1

    # --- lookup -------------------------------------------------------------------------------
    def _walk(self, key: list[int]) -> tuple[Node, list[torch.Tensor], int]:
        """Follow ``key`` down the tree (splitting the last node at the divergence point); returns the
        deepest node, the slots along the path and how many tokens matched."""
        node, parts, i = self.root, [], 0
        now = time.monotonic()
        node.last_access = now
        while i < len(key) and key[i] in node.children:
            child = node.children[key[i]]
            n = _common_len(child.key, key[i:])
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            parts.append(child.slots)
            node, i = child, i + n
        return node, parts, i

    def match_prefix(self, key: list[int]) -> PrefixMatch:
        node, parts, _ = self._walk(key)
        return PrefixMatch(torch.cat(parts) if parts else EMPTY_SLOTS, node)

    def record(self, match: PrefixMatch, total_tokens: int) -> None:
        super().record(match, total_tokens)
        node = match.node
        while node is not None and node is not self.root:
            node.hits += 1
            node = node.parent

    def _split(self, child: Node, n: int) -> Node:
        """Split ``child`` so that its first ``n`` tokens become a new parent node; returns it."""
        mid = Node(next(self._ids), child.key[:n], child.slots[:n], child.parent)
        mid.lock_ref, mid.last_access, mid.hits = child.lock_ref, child.last_access, child.hits
        mid.children = {child.key[n]: child}
        child.parent.children[child.key[0]] = mid
        child.key, child.slots, child.parent, child._preview = child.key[n:], child.slots[n:], mid, None
        self.version += 1
        return mid

    # --- insert ---------------------------------------------------------------------------------
    def insert(self, key: list[int], slots: torch.Tensor) -> int:
        assert len(key) == slots.numel()
        node, _, i = self._walk(key)
        now = time.monotonic()
        existing = i
        if i < len(key):
            leaf = Node(next(self._ids), list(key[i:]), slots[i:].clone(), node)
            leaf.last_access = now
            node.children[key[i]] = leaf
            self._evictable += len(leaf.key)
            self.version += 1
        return existing

    # --- references -----------------------------------------------------------------------------
    def lock(self, node: Node) -> None:
        while node is not None and node is not self.root:
            if node.lock_ref == 0:
                self._evictable -= len(node.key)
                self._protected += len(node.key)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: Node) -> None:
        while node is not None and node is not self.root:
            assert node.lock_ref > 0, "radix node unlocked more often than locked"
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._evictable += len(node.key)
                self._protected -= len(node.key)
            node = node.parent

    @property
    def evictable_size(self) -> int:
        return self._evictable

    @property
    def protected_size(self) -> int:
        return self._protected

    # --- eviction -------------------------------------------------------------------------------
    def _leaves(self) -> list[Node]:
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            if not node.children and node is not self.root:
                out.append(node)
            stack.extend(node.children.values())
        return out

    def evict(self, num_tokens: int) -> int:
        """Free at least ``num_tokens`` slots if possible, least recently used leaves first."""
        heap = [leaf for leaf in self._leaves() if leaf.lock_ref == 0]
        heapq.heapify(heap)
        freed = 0
        while freed < num_tokens and heap:
            leaf = heapq.heappop(heap)
            self.free_slots(leaf.slots)
            freed += len(leaf.key)
            self._evictable -= len(leaf.key)
            parent = leaf.parent
            del parent.children[leaf.key[0]]
            if parent is not self.root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, parent)
        if freed:
            self.version += 1
        return freed

    # --- view -----------------------------------------------------------------------------------
    def _preview(self, node: Node) -> str:
        if node._preview is None:
            ids = node.key[:_PREVIEW_TOKENS]
            text = self.decode(ids) if self.decode else " ".join(map(str, ids))
            node._preview = text + ("…" if len(node.key) > _PREVIEW_TOKENS else "")
        return node._preview

    def snapshot(self, max_nodes: int = 500) -> dict:
        """The tree as plain data (breadth-first, at most ``max_nodes`` nodes; the rest summarised)."""
        nodes, queue, total, skipped = [], [self.root], 0, 0
        wall_offset = time.time() - time.monotonic()
        while queue:
            node = queue.pop(0)
            total += len(node.key)
            if len(nodes) < max_nodes:
                nodes.append({"id": node.id, "parent": node.parent.id if node.parent else -1,
                              "tokens": len(node.key), "text": self._preview(node) if node.key else "",
                              "ref": node.lock_ref if node is not self.root else 0,
                              "last_access": node.last_access + wall_offset, "hits": node.hits})
            else:
                skipped += 1
            queue.extend(node.children.values())
        return {"nodes": nodes, "skipped_nodes": skipped, "total_tokens": total,
                "evictable_tokens": self._evictable, "hit_tokens": self.hit_tokens,
                "miss_tokens": self.miss_tokens, "hit_rate": self.hit_rate, "version": self.version}
