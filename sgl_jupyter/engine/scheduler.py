"""Continuous batching: admission by free KV and a token budget, chunked prefill, decode,
retraction when decode runs out of slots, abort. The scheduler owns the KV invariants:
every slot is either free, owned by exactly one admitted request, or owned by the prefix cache;
a slot owned by the cache is never written."""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Optional

import torch

from .decode_phase import DecodePhase
from .detokenizer import IncrementalDetokenizer
from .events import EventBus, StepEvent
from .kv_pool import KVPool, ReqToTokenPool
from .model_runner import ModelRunner
from .output import OutputBuilder
from .overlap import InFlight, OverlapPipeline
from .prefill_phase import PrefillPhase
from .prefix_cache import PrefixCache
from .request import Req
from .scheduler_policy import SchedulerLimits, decode_reserve
from .timeline import EngineTimeline
from .token_output import TokenOutput

logger = logging.getLogger(__name__)

__all__ = ["Scheduler", "SchedulerLimits", "InFlight"]


class Scheduler(PrefillPhase, DecodePhase, OverlapPipeline, TokenOutput):
    """The scheduler thread's state and its step loop; the phases are mixins in their own modules
    (prefill_phase, decode_phase, overlap, token_output), the admission policy in scheduler_policy."""

    timeline: Optional[EngineTimeline] = None  # set by the engine: its step history since load

    def __init__(self, runner: ModelRunner, kv_pool: KVPool, req_pool: ReqToTokenPool, cache: PrefixCache,
                 detokenizer: IncrementalDetokenizer, eos_ids: set[int], limits: SchedulerLimits, bus: EventBus,
                 output: OutputBuilder, generator: Optional[torch.Generator] = None):
        self.runner, self.kv_pool, self.req_pool, self.cache = runner, kv_pool, req_pool, cache
        self.detok, self.eos_ids, self.limits, self.bus = detokenizer, eos_ids, limits, bus
        self.output = output
        self.generator = generator
        self.waiting: deque[Req] = deque()
        self.running: list[Req] = []
        self.chunked: Optional[Req] = None
        self.device = runner.device
        # statistics
        self.num_finished = 0
        self.num_retracted = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.cached_tokens_total = 0
        self.forward_tokens_total = 0
        self.extend_tokens_total = 0
        # grammar jump-forward (jump_forward.py): forced text appended or verified without a step per token
        self.enable_jump_forward = True
        self.jump_forward_tokens_total = 0  # tokens that took no step of their own
        self.continuous_decode_steps = 1  # >1: greedy decode steps per graph launch (engine sets it on CUDA)
        self.draft_tokens_total = 0  # drafts verified, and of those accepted
        self.draft_tokens_accepted = 0
        self._recent: deque[tuple[float, int]] = deque(maxlen=256)
        self.last_batch: dict = {}
        self._last_num_tokens = 0
        self._decode_steps = 0
        self._in_flight: Optional[InFlight] = None  # a multi-step decode launched, its tokens not committed
        self.overlapped_launches = 0  # launches enqueued before the previous launch's tokens were committed
        self._last_decode_t, self._extended_since_decode = 0.0, False
        self.decode_gap_steps = 0  # decode steps run before a waiting prefill (max_decode_gap_s)
        self.sampled_launches = 0  # multi-step launches that sampled on the device (not greedy)

    # ------------------------------------------------------------------ public (scheduler thread only)
    @property
    def num_running(self) -> int:
        return len(self.running) + (1 if self.chunked is not None else 0)

    @property
    def num_queued(self) -> int:
        return len(self.waiting)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.chunked)

    def add(self, req: Req) -> None:
        self.waiting.append(req)

    def abort(self, rid: str) -> bool:
        """Abort a request wherever it is. Runs between steps, so no forward is using its slots, except
        a launch in flight: its requests are marked, and finish when their tokens are committed."""
        found = False
        for req in list(self.waiting):
            if req.rid == rid:
                self.waiting.remove(req)
                self._finish(req, {"type": "abort", "message": "aborted by the client"}, free=False)
                found = True
        for req in list(self.running):
            if req.rid == rid:
                if self._in_flight is not None and any(req is r for r in self._in_flight.batch):
                    req.abort_requested = True
                else:
                    self.running.remove(req)
                    self._finish(req, {"type": "abort", "message": "aborted by the client"})
                found = True
        if self.chunked is not None and self.chunked.rid == rid:
            req, self.chunked = self.chunked, None
            self._finish(req, {"type": "abort", "message": "aborted by the client"})
            found = True
        return found

    def abort_all(self, message: str) -> None:
        self.drain_in_flight()
        for req in list(self.waiting) + list(self.running) + ([self.chunked] if self.chunked else []):
            self.abort(req.rid)
            req.finish_reason = {"type": "abort", "message": message}

    def tokens_per_s(self, window: float = 5.0) -> float:
        now = time.perf_counter()
        pts = [(t, n) for t, n in list(self._recent) if now - t <= window]  # read from other threads
        if len(pts) < 2:
            return 0.0
        span = max(now - pts[0][0], 1e-6)
        return sum(n for _, n in pts[1:]) / span

    def step(self) -> bool:
        """Run one forward (a prefill batch if one can be formed, else a decode batch)."""
        t0 = time.perf_counter()
        if self._in_flight is not None:
            batch = self._in_flight.batch
            self._step_in_flight()
            mode = "decode"
        elif not self._decode_overdue(t0) and (batch := self._schedule_extend()):
            self._run_extend(batch)
            mode = "extend"
        else:
            batch = self._schedule_decode()
            if not batch:
                return False
            self._run_decode(batch)
            mode = "decode"
        if mode == "decode":
            self._last_decode_t, self._extended_since_decode = t0, False
        else:
            self._extended_since_decode = True
        dt = time.perf_counter() - t0
        self.last_batch = {"mode": mode, "batch_size": len(batch), "duration_s": dt}
        if self.bus.active:
            self.bus.emit(StepEvent(mode=mode, batch_size=len(batch), num_tokens=self._last_num_tokens,
                                    running=self.num_running, queued=self.num_queued,
                                    kv_used=self.kv_pool.size - self.kv_pool.free_size - self.cache.evictable_size,
                                    kv_total=self.kv_pool.size, cache_hit_rate=self.cache.hit_rate,
                                    tokens_per_s=self.tokens_per_s(), duration_s=dt))
        if self.timeline is not None:  # history since load (timeline.py), kept with or without subscribers
            self.timeline.on_step(self.generation_tokens_total, self.num_running, self.num_queued,
                                  self.cache.hit_rate)
        return True

    def _decode_overdue(self, now: float) -> bool:
        """Running streams have waited longer than ``max_decode_gap_s`` (a prefill ran since their last
        decode step): decode before the next prefill."""
        gap = self.limits.max_decode_gap_s
        if gap <= 0 or not self.running:
            return False
        # only after a prefill: a decode step always lets the next prefill in, whatever the bound
        overdue = self._extended_since_decode and now - self._last_decode_t > gap
        if overdue:
            self.decode_gap_steps += 1
        return overdue

    # ------------------------------------------------------------------ memory helpers
    def _alloc_slots(self, n: int) -> Optional[torch.Tensor]:
        slots = self.kv_pool.alloc(n)
        if slots is None:
            self.cache.evict(n - self.kv_pool.free_size)
            slots = self.kv_pool.alloc(n)
        return slots

    def _available_tokens(self) -> int:
        return self.kv_pool.free_size + self.cache.evictable_size

    def _reserved_decode_tokens(self) -> int:
        reqs = self.running + ([self.chunked] if self.chunked else [])
        return sum(decode_reserve(r) for r in reqs)

    def _insert_into_cache(self, req: Req) -> list[int]:
        """Offer the request's computed KV to the prefix cache; free the slots that duplicated what
        the cache already held. Returns the key inserted."""
        kv = req.kv_len
        slots = self.req_pool.read(req.row, kv)
        key = req.fill_ids[:kv]
        existing = self.cache.insert(key, slots)
        if existing > req.cache_protected_len:
            self.kv_pool.free(slots[req.cache_protected_len:existing])
        return key

    def _release(self, req: Req) -> None:
        """Give a request's KV back: computed tokens go into the prefix cache, the request's row
        and its lock on the cache are released."""
        if req.row is None:
            return
        self._insert_into_cache(req)
        if req.cache_node is not None:
            self.cache.unlock(req.cache_node)
        self.req_pool.free(req.row)
        req.row, req.cache_node, req.cache_protected_len, req.kv_len = None, None, 0, 0

    def _cache_unfinished(self, req: Req) -> None:
        """After a prefill completes: share its KV through the cache right away, so requests that
        arrive while it decodes can reuse the prompt."""
        if not self.cache.reuses_prefixes:
            return
        kv = req.kv_len
        key = self._insert_into_cache(req)
        match = self.cache.match_prefix(key)
        assert match.length == kv, "the prefix cache lost tokens it just accepted"
        self.req_pool.write(req.row, 0, match.slots)
        self.cache.lock(match.node)
        if req.cache_node is not None:
            self.cache.unlock(req.cache_node)
        req.cache_node, req.cache_protected_len = match.node, kv

