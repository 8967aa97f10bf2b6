"""Continuous batching: admission by free KV and a token budget, chunked prefill, decode,
retraction when decode runs out of slots, abort. The scheduler owns the KV invariants:
every slot is either free, owned by exactly one admitted request, or owned by the prefix cache;
a slot owned by the cache is never written."""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .detokenizer import IncrementalDetokenizer
from .events import EventBus, FinishEvent, StepEvent, TokenEvent
from .forward_batch import ForwardBatch, ForwardMode
from .jump_forward import DraftPlan, mask_admits_only, plan_drafts, verify_drafts
from .cuda_graph_runner import MultiStepLaunch
from .kv_pool import KVPool, ReqToTokenPool
from .model_runner import ModelRunner
from .output import OutputBuilder
from .prefix_cache import PrefixCache
from .request import Req
from .sampling import SamplingRow, apply_penalties, sample
from .timeline import EngineTimeline

logger = logging.getLogger(__name__)

# Decode tokens reserved per running request when admitting new ones (a fraction of what it may still
# generate, clipped): over-admission is caught by retraction, under-admission wastes the batch.
NEW_TOKEN_RATIO = 0.3
RESERVE_CLIP = 256
LPM_MAX_QUEUE = 128  # beyond this many waiting requests, longest-prefix-first costs more than it saves


@dataclass
class SchedulerLimits:
    max_running: int
    max_context: int
    chunked_prefill_size: int
    max_prefill_tokens: int
    schedule_policy: str = "lpm"


@dataclass
class InFlight:
    """A multi-step decode launched and not yet committed: its batch, in launch order, and its handle."""
    batch: list[Req]
    handle: MultiStepLaunch


class Scheduler:
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
        elif batch := self._schedule_extend():
            self._run_extend(batch)
            mode = "extend"
        else:
            batch = self._schedule_decode()
            if not batch:
                return False
            self._run_decode(batch)
            mode = "decode"
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
        return sum(int(min(r.remaining_new_tokens, RESERVE_CLIP) * NEW_TOKEN_RATIO) for r in reqs)

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

    # ------------------------------------------------------------------ extend (prefill)
    def _order_waiting(self) -> list[Req]:
        reqs = list(self.waiting)
        if self.limits.schedule_policy == "lpm" and len(reqs) <= LPM_MAX_QUEUE:
            lens = {id(r): self.cache.match_prefix(r.fill_ids[:r.max_prefix_len]).length for r in reqs}
            reqs.sort(key=lambda r: -lens[id(r)])
        return reqs

    def _schedule_extend(self) -> list[tuple[Req, int]]:
        """Pick (request, number of new tokens) pairs for one prefill forward."""
        budget = self.limits.chunked_prefill_size if self.limits.chunked_prefill_size > 0 \
            else self.limits.max_prefill_tokens
        batch: list[tuple[Req, int]] = []
        if self.chunked is not None:
            req = self.chunked
            n = min(req.prefill_target - req.kv_len, budget)
            slots = self._alloc_slots(n)
            if slots is None:
                return []  # decode will free memory (or retract) first
            self.req_pool.write(req.row, req.kv_len, slots)
            req._new_slots = slots
            batch.append((req, n))
            budget -= n
            if req.kv_len + n < req.prefill_target:
                return batch  # still chunking: nothing else fits
        if not self.waiting:
            return batch
        reserved = self._reserved_decode_tokens()
        for req in self._order_waiting():
            if budget <= 0 or self.num_running + len(batch) - (1 if self.chunked else 0) >= self.limits.max_running:
                break
            if self.req_pool.free_rows == 0:
                break
            match = self.cache.match_prefix(req.fill_ids[:req.max_prefix_len])
            need = req.prefill_target - match.length
            full_need = need + int(min(req.remaining_new_tokens, RESERVE_CLIP) * NEW_TOKEN_RATIO)
            # the cache entries this request would lock cannot be evicted to make room for it
            avail = self._available_tokens() - reserved - (match.length if match.node is not None else 0)
            if full_need > avail and (batch or self.running or self.chunked):
                break
            n = min(need, budget)
            if n < need and n < min(64, budget) and batch:
                break  # a tiny chunk is not worth starting now
            self.cache.lock(match.node) if match.node is not None else None
            slots = self._alloc_slots(n) if n > 0 else torch.empty(0, dtype=torch.int64)
            if slots is None:
                if match.node is not None:
                    self.cache.unlock(match.node)
                break
            self.waiting.remove(req)
            row = self.req_pool.alloc()
            req.row, req.cache_node = row, match.node
            req.kv_len = req.cache_protected_len = match.length
            if match.length:
                self.req_pool.write(row, 0, match.slots)
            self.req_pool.write(row, match.length, slots)
            if not req.admitted_once:
                req.cached_tokens = match.length
                req.admitted_once = True
                self.cache.record(match, req.fill_len)
                self.prompt_tokens_total += len(req.prompt_ids)
                self.cached_tokens_total += match.length
            req._new_slots = slots
            if n == 0:  # a resumed request whose KV was all still cached
                self.running.append(req)
                continue
            batch.append((req, n))
            reserved += int(min(req.remaining_new_tokens, RESERVE_CLIP) * NEW_TOKEN_RATIO)
            budget -= n
            if n < need:
                self.chunked = req
                break
        return batch

    def _run_extend(self, batch: list[tuple[Req, int]]) -> None:
        input_ids, positions, rows, prefix_lens, ext_lens, locs = [], [], [], [], [], []
        logits_rows: list[int] = []
        sample_pos: dict[int, int] = {}  # batch index -> index into logits rows
        lp_rows: dict[int, list[tuple[int, int]]] = {}  # batch index -> [(logits row, target token)]
        offset = 0
        for i, (req, n) in enumerate(batch):
            start = req.kv_len
            ids = req.fill_ids
            input_ids.extend(ids[start:start + n])
            positions.extend(range(start, start + n))
            rows.append(req.row)
            prefix_lens.append(start)
            ext_lens.append(n)
            locs.append(req._new_slots)
            if req.wants_input_logprobs:
                first = max(req.logprob_start_len - 1, start)
                last = min(start + n, len(req.prompt_ids) - 1)  # predict prompt tokens only
                pairs = []
                for q in range(first, last):
                    pairs.append((len(logits_rows), ids[q + 1]))
                    logits_rows.append(offset + q - start)
                lp_rows[i] = pairs
            completes = start + n == req.prefill_target
            if completes and not req.output_ids and req.params.max_new_tokens > 0:
                sample_pos[i] = len(logits_rows)
                logits_rows.append(offset + n - 1)
            offset += n
        fb = ForwardBatch.build(ForwardMode.EXTEND, input_ids, positions, torch.cat(locs), rows, prefix_lens,
                                ext_lens, self.req_pool.table, logits_rows, self.device)
        logits = self.runner.forward(fb)
        if logger.isEnabledFor(logging.INFO):
            logger.info("prefill batch: reqs=%d new_tokens=%d radix_cache_hit=%d radix_cache_miss=%d "
                        "running=%d queued=%d kv_free=%d", len(batch), len(input_ids), sum(prefix_lens),
                        len(input_ids), self.num_running, self.num_queued, self.kv_pool.free_size)
        self._last_num_tokens = len(input_ids)
        self.extend_tokens_total += len(input_ids)
        self.forward_tokens_total += len(input_ids)
        if lp_rows:
            self._collect_input_logprobs(batch, logits, lp_rows)
        to_sample: list[tuple[Req, int]] = []
        for i, (req, n) in enumerate(batch):
            req.kv_len += n
            if req.is_prefilling:
                continue  # chunked: more next step
            if self.chunked is req:
                self.chunked = None
            if req.wants_input_logprobs:
                req.input_logprobs_done = True
            if req.abort_requested:
                self._finish(req, {"type": "abort", "message": "aborted by the client"})
            elif not req.output_ids and req.params.max_new_tokens == 0:
                self._finish(req, {"type": "length", "length": 0})  # prefill only: warm cache / score
            else:
                self._cache_unfinished(req)
                if i in sample_pos:
                    to_sample.append((req, sample_pos[i]))
                self.running.append(req)
        if to_sample:
            idx = torch.tensor([p for _, p in to_sample], device=logits.device)
            self._sample_and_process([r for r, _ in to_sample], logits.index_select(0, idx))

    def _collect_input_logprobs(self, batch, logits: torch.Tensor, lp_rows: dict) -> None:
        logprobs = torch.log_softmax(logits, dim=-1)
        for i, pairs in lp_rows.items():
            req = batch[i][0]
            if req.logprob_start_len == 0 and not req.input_token_logprobs:
                req.input_token_logprobs.append([None, req.prompt_ids[0], None])
                if req.top_logprobs_num:
                    req.input_top_logprobs.append(None)
            if not pairs:
                continue
            r = torch.tensor([p for p, _ in pairs], device=logprobs.device)
            toks = torch.tensor([t for _, t in pairs], device=logprobs.device)
            lps = logprobs.index_select(0, r)
            vals = lps.gather(1, toks.view(-1, 1)).squeeze(1).tolist()
            for (_, tok), v in zip(pairs, vals):
                req.input_token_logprobs.append([v, tok, None])
            if req.top_logprobs_num:
                top = lps.topk(req.top_logprobs_num, dim=-1)
                for vs, ids in zip(top.values.tolist(), top.indices.tolist()):
                    req.input_top_logprobs.append([[v, t, None] for v, t in zip(vs, ids)])

    # ------------------------------------------------------------------ decode
    def _decode_need(self) -> int:
        """KV slots the next decode step writes: one per request, more for those with grammar-forced
        tokens pending or drafts to verify."""
        return sum(r.fill_len - r.kv_len + len(r.draft_ids) for r in self.running)

    def _schedule_decode(self) -> list[Req]:
        if not self.running:
            return []
        need = self._decode_need()
        if self.kv_pool.free_size < need:
            self.cache.evict(need - self.kv_pool.free_size)
        if self.kv_pool.free_size < self._decode_need():
            for req in self.running:  # drafts are optional: drop them before taking anyone's KV
                req.drop_drafts()
        while self.kv_pool.free_size < self._decode_need() and len(self.running) > 1:
            self._retract_one()
            self.cache.evict(self._decode_need() - self.kv_pool.free_size)
        if self.kv_pool.free_size < self._decode_need():
            req = self.running.pop()
            self._finish(req, {"type": "abort", "message": "the KV cache is too small for this request: raise "
                                                           "--max-total-tokens or --mem-fraction-static"})
            return []
        return list(self.running)

    def _retract_one(self) -> None:
        """Take back the request that has decoded least (cheapest to redo); it waits at the front."""
        victim = min(self.running, key=lambda r: (len(r.output_ids), -len(r.prompt_ids)))
        self.running.remove(victim)
        self._release(victim)
        self.waiting.appendleft(victim)
        self.num_retracted += 1
        logger.info("retracted request %s (KV pool full); it will resume from the prefix cache", victim.rid)

    def _run_decode(self, batch: list[Req]) -> None:
        if any(req.fill_len - req.kv_len > 1 or req.draft_ids for req in batch):
            return self._run_decode_with_drafts(batch)
        if self.continuous_decode_steps > 1 and self._multi_step_ok(batch):
            return self._run_decode_multi_step(batch)
        slots = self.kv_pool.alloc(len(batch))
        assert slots is not None
        input_ids, positions, rows, prefix_lens = [], [], [], []
        for req in batch:
            input_ids.append(req.last_id)
            positions.append(req.kv_len)
            rows.append(req.row)
            prefix_lens.append(req.kv_len)
        fb = ForwardBatch.build(ForwardMode.DECODE, input_ids, positions, slots, rows, prefix_lens,
                                [1] * len(batch), self.req_pool.table, list(range(len(batch))), self.device)
        # each request's new slot goes into its table row: one scatter on the device, not one write each
        self.req_pool.table[fb.req_pool_indices, fb.positions] = fb.out_cache_loc.to(torch.int32)
        self.req_pool.mirror_cells(torch.tensor(rows), torch.tensor(positions), slots)
        logits = self.runner.forward(fb)
        self._decode_steps += 1
        if self._decode_steps % 64 == 0 and logger.isEnabledFor(logging.INFO):
            logger.info("decode batch: reqs=%d tokens/s=%.1f cache_hit_rate=%.2f running=%d queued=%d kv_free=%d",
                        len(batch), self.tokens_per_s(), self.cache.hit_rate, self.num_running, self.num_queued,
                        self.kv_pool.free_size)
        self._last_num_tokens = len(batch)
        self.forward_tokens_total += len(batch)
        for req in batch:
            req.kv_len += 1
        self._sample_and_process(batch, logits)

    def _multi_step_ok(self, batch: list[Req], pending: int = 0) -> bool:
        """Several decode steps per launch (CUDA graphs) pay off when the host has nothing to do between
        tokens: every request greedy and free of grammar, penalties, logprobs and pending min_new_tokens,
        nobody waiting who could be admitted now (a request row free), room in the KV pool and the context
        for all the steps, and few steps run past the requests' max_new_tokens (a request that ends inside
        a launch wastes the rest of it; at most a quarter of the launch's rows may be such waste).
        ``pending``: tokens per request launched but not yet committed (their KV is in ``kv_len``)."""
        k = self.continuous_decode_steps
        admissible = self.waiting and self.num_running < self.limits.max_running
        if admissible or not batch or len(batch) > self.runner.multi_step_batch_limit():
            return False
        waste = 0
        for r in batch:
            p = r.params
            if (not p.is_greedy or r.grammar is not None or r.return_logprob or p.needs_penalties
                    or len(r.output_ids) < p.min_new_tokens or r.abort_requested
                    or r.kv_len + k >= self.limits.max_context):
                return False
            waste += max(0, k - (p.max_new_tokens - len(r.output_ids) - pending))
        if 4 * waste > k * len(batch):
            return False
        need = k * len(batch)
        if self.kv_pool.free_size < need:
            self.cache.evict(need - self.kv_pool.free_size)
        return self.kv_pool.free_size >= need

    def _run_decode_multi_step(self, batch: list[Req], carry: Optional[list[int]] = None) -> None:
        """Launch ``continuous_decode_steps`` greedy tokens per request in one graph and leave them in
        flight: the next step commits them, one at a time as single steps would (a request that stops
        early gives back the KV of the steps it did not need; its output is the same as step-by-step
        decoding). ``carry[i]``: the index in the launch in flight whose last token feeds ``batch[i]`` (it
        is still on the device); see ``_step_in_flight``."""
        k, n = self.continuous_decode_steps, len(batch)
        locs = self.kv_pool.alloc(k * n).view(k, n)
        rows = torch.tensor([r.row for r in batch])
        positions = torch.tensor([r.kv_len for r in batch]).view(1, n) + torch.arange(k).view(k, 1)
        self.req_pool.mirror_cells(rows.expand(k, n), positions, locs)  # the launch writes the device's
        launch = self.runner.launch_decode_multi_step([r.last_id for r in batch], [r.kv_len for r in batch],
                                                      locs, [r.row for r in batch], carry)
        self._decode_steps += k
        self._last_num_tokens = n
        self.forward_tokens_total += k * n
        for req in batch:
            req.kv_len += k  # the steps write KV for the last token and the first k-1 new ones
        self._in_flight = InFlight(list(batch), launch)

    def _step_in_flight(self) -> None:
        """Commit the launch in flight; before that, launch the next steps for the requests that go on
        (SGLang's overlap scheduling, for multi-step decode), so the host's work on one launch overlaps
        the GPU's on the next. Who goes on is known before the commit except for stops the host has not
        seen yet (EOS, stop strings): the requests that reach max_new_tokens in the launch, and aborted
        ones, are left out; one that stops early runs one launch too many, whose tokens are dropped and
        whose KV goes back when it finishes."""
        prev, self._in_flight = self._in_flight, None
        k = self.continuous_decode_steps
        index = {id(r): i for i, r in enumerate(prev.batch)}  # requests stopped earlier are not running
        if self.chunked is None and all(id(r) in index for r in self.running):
            nxt = [r for r in self.running
                   if not r.abort_requested and len(r.output_ids) + k < r.params.max_new_tokens]
            if self._multi_step_ok(nxt, pending=k):
                self._run_decode_multi_step(nxt, carry=[index[id(r)] for r in nxt])
                self.overlapped_launches += 1
        self._commit_launch(prev)

    def _commit_launch(self, launch: InFlight) -> None:
        tokens = launch.handle.tokens()
        added = 0
        for i, req in enumerate(launch.batch):
            if req.finished:  # it ended in the launch before; this one ran on past its end
                continue
            added += self._commit(req, [step[i] for step in tokens])
        self._record_tokens(added)

    def drain_in_flight(self) -> None:
        """Commit a launch in flight (before the requests are touched from outside a step)."""
        if self._in_flight is not None:
            prev, self._in_flight = self._in_flight, None
            self._commit_launch(prev)

    def discard_in_flight(self) -> None:
        """Forget a launch in flight without committing it (the engine is resetting after a failure)."""
        self._in_flight = None

    def _run_decode_with_drafts(self, batch: list[Req]) -> None:
        """A decode step where some requests carry several new tokens: grammar-forced tokens appended
        without a step, and drafts to verify (jump_forward.py). One extend-mode forward over every
        request's pending tokens and drafts, logits at each request's last pending token and at every
        draft, so forced text costs no step of its own."""
        new_lens = [req.fill_len - req.kv_len + len(req.draft_ids) for req in batch]
        slots = self.kv_pool.alloc(sum(new_lens))
        assert slots is not None
        input_ids, positions, rows, prefix_lens, logits_rows = [], [], [], [], []
        offset = 0
        for req, n in zip(batch, new_lens):
            start = req.kv_len
            input_ids.extend(req.fill_ids[start:])
            input_ids.extend(req.draft_ids)
            positions.extend(range(start, start + n))
            rows.append(req.row)
            prefix_lens.append(start)
            self.req_pool.write(req.row, start, slots[offset:offset + n])
            offset += n
            logits_rows.extend(range(offset - 1 - len(req.draft_ids), offset))
        fb = ForwardBatch.build(ForwardMode.EXTEND, input_ids, positions, slots, rows, prefix_lens, new_lens,
                                self.req_pool.table, logits_rows, self.device)
        logits = self.runner.forward(fb)
        self._last_num_tokens = offset
        self.forward_tokens_total += offset
        plain, plain_rows, drafted = [], [], []
        row = 0
        for req, n in zip(batch, new_lens):
            req.kv_len += n
            if req.draft_ids:
                drafted.append((req, row))
            else:
                plain.append(req)
                plain_rows.append(row)
            row += len(req.draft_ids) + 1
        if plain:
            self._sample_and_process(plain, logits.index_select(0, torch.tensor(plain_rows, device=logits.device)))
        added = 0
        for req, row in drafted:
            added += self._verify_and_process(req, logits[row:row + len(req.draft_ids) + 1])
        self._record_tokens(added)

    def _verify_and_process(self, req: Req, logits: torch.Tensor) -> int:
        """Verify a request's drafts (their KV was just computed), give the rejected drafts' slots back,
        and append the accepted drafts and the token after them. Returns the tokens added."""
        drafts, masks = req.draft_ids, req.draft_masks
        req.drop_drafts()
        n = len(drafts)
        logprobs = torch.log_softmax(logits, dim=-1) if req.return_logprob else None
        try:
            base = len(req.output_ids)
            rows = [SamplingRow(req.params, req.prompt_ids, req.output_ids + drafts[:j],
                                self._banned_ids(req, base + j, masks[j]), req.generator) for j in range(n + 1)]
            accepted, token = verify_drafts(logits, drafts, masks, rows, self.generator)
        except Exception as e:  # noqa: BLE001 - this request's grammar or sampling failed: it fails alone
            self._truncate_kv(req, req.kv_len - n)
            return self._commit(req, [], error=e)
        self._truncate_kv(req, req.kv_len - n + accepted)
        self.jump_forward_tokens_total += accepted
        self.draft_tokens_total += n
        self.draft_tokens_accepted += accepted
        tokens = drafts[:accepted] + [token]
        lps = self._token_logprobs(req, logprobs[:accepted + 1], tokens) if logprobs is not None else None
        return self._commit(req, tokens, lps)

    def _truncate_kv(self, req: Req, kv_len: int) -> None:
        """Give back the KV slots of positions ``kv_len..`` (drafts rejected, or verified past a stop)."""
        if kv_len >= req.kv_len:
            return
        assert kv_len >= req.cache_protected_len, "the prefix cache's slots are not the request's to free"
        self.kv_pool.free(self.req_pool.read(req.row, req.kv_len, start=kv_len))
        self.req_pool.clear(req.row, kv_len, req.kv_len)
        req.kv_len = kv_len

    # ------------------------------------------------------------------ sampling and outputs
    def _banned_ids(self, req: Req, num_output: int, mask_row: Optional[torch.Tensor] = None) -> tuple:
        """Stop ids banned at an output position before min_new_tokens, unless the grammar allows nothing
        else there (the grammar wins). ``mask_row``: that position's grammar bitmask, when precomputed."""
        if num_output >= req.params.min_new_tokens:
            return ()
        stops = self.eos_ids | set(req.params.stop_token_ids)
        if req.grammar is not None:
            if mask_row is not None and mask_admits_only(mask_row, stops):
                return ()
            if mask_row is None and req.grammar.forced_stop_token() is not None:
                return ()
        return tuple(stops)

    def _sample_and_process(self, reqs: list[Req], logits: torch.Tensor) -> None:
        want_lp = any(r.return_logprob for r in reqs)
        logprobs = torch.log_softmax(logits, dim=-1) if want_lp else None
        failed: dict[int, Exception] = {}  # a request whose grammar or sampling fails, fails alone
        rows = []
        for i, r in enumerate(reqs):
            try:
                banned = self._banned_ids(r, len(r.output_ids))
            except Exception as e:  # noqa: BLE001
                failed[i], banned = e, ()
            rows.append(SamplingRow(r.params, r.prompt_ids, r.output_ids, banned, r.generator))
        if any(r.params.needs_penalties for r in reqs):
            apply_penalties(logits, rows)
        grammar_rows = [i for i, r in enumerate(reqs) if r.grammar is not None and i not in failed]
        if grammar_rows:
            from .constrained import allocate_token_bitmask, apply_token_bitmask

            bitmask = allocate_token_bitmask(len(reqs), logits.shape[-1])
            for i in grammar_rows:
                try:
                    reqs[i].grammar.fill_bitmask(bitmask, i)
                except Exception as e:  # noqa: BLE001
                    failed[i] = e
            apply_token_bitmask(logits, bitmask.to(logits.device), [i for i in grammar_rows if i not in failed])
        next_ids = self._sample_rows(logits, rows, failed)
        lp_vals = top = None
        if logprobs is not None:
            idx = torch.tensor([max(t, 0) for t in next_ids], device=logprobs.device).view(-1, 1)
            lp_vals = logprobs.gather(1, idx).squeeze(1).tolist()
            k = max(r.top_logprobs_num for r in reqs)
            if k:
                t = logprobs.topk(k, dim=-1)
                top = (t.values.tolist(), t.indices.tolist())
        added = 0
        for i, (req, tok) in enumerate(zip(reqs, next_ids)):
            if i in failed:
                self._commit(req, [], error=failed[i])
                continue
            lps = None
            if req.return_logprob and lp_vals is not None:
                n = req.top_logprobs_num
                lps = [(lp_vals[i], [[v, t, None] for v, t in zip(top[0][i][:n], top[1][i][:n])]
                        if n and top is not None else None)]
            added += self._commit(req, [tok], lps)
        self._record_tokens(added)

    def _sample_rows(self, logits: torch.Tensor, rows: list[SamplingRow], failed: dict) -> list[int]:
        """Sample the batch; if that fails (a row with nothing left to sample, say), row by row, so that
        only the rows that fail are marked failed (token -1)."""
        try:
            return sample(logits, rows, self.generator).tolist()
        except RuntimeError:
            out = []
            for i, row in enumerate(rows):
                try:
                    out.append(int(sample(logits[i:i + 1], [row], self.generator)[0]))
                except RuntimeError as e:
                    failed.setdefault(i, e)
                    out.append(-1)
            return out

    def _token_logprobs(self, req: Req, logprobs: torch.Tensor, tokens: list[int]) -> list[tuple]:
        """(logprob, top logprobs or None) of ``tokens[j]`` under row j of ``logprobs``."""
        idx = torch.tensor(tokens, device=logprobs.device).view(-1, 1)
        vals = logprobs.gather(1, idx).squeeze(1).tolist()
        tops: list = [None] * len(tokens)
        if req.top_logprobs_num:
            t = logprobs.topk(req.top_logprobs_num, dim=-1)
            tops = [[[v, i, None] for v, i in zip(vs, ids)] for vs, ids in zip(t.values.tolist(), t.indices.tolist())]
        return list(zip(vals, tops))

    def _record_tokens(self, n: int) -> None:
        self._recent.append((time.perf_counter(), n))
        self.generation_tokens_total += n

    def _commit(self, req: Req, tokens: list[int], logprobs: Optional[list[tuple]] = None,
                error: Optional[Exception] = None) -> int:
        """Append one request's tokens of this step (accepted drafts, then the sampled one) one at a time,
        as step-by-step decoding would, stopping at the first that ends the request; then what the grammar
        forces next (certain tokens, a forced EOS) and the next drafts. A grammar or sampling ``error``
        (raised here or given) aborts this request alone. Returns the tokens added."""
        if req.first_token_time is None:
            req.first_token_time = time.perf_counter()
        new_ids: list[int] = []
        reason = None
        try:
            if error is not None:
                raise error
            for k, tok in enumerate(tokens):
                new_ids.append(tok)
                reason = self._append_token(req, tok, None if logprobs is None else logprobs[k])
                if reason is not None:
                    break
            if reason is None and req.grammar is not None and self.enable_jump_forward:
                plan = self._plan_jump_forward(req)
                for tok in plan.certain:
                    new_ids.append(tok)
                    self.jump_forward_tokens_total += 1
                    reason = self._append_token(req, tok, None)
                    if reason is not None:
                        break
                if reason is None and plan.drafts:
                    req.draft_ids, req.draft_masks = plan.drafts, plan.masks
                elif reason is None:
                    eos = self._forced_eos(req)
                    if eos is not None:
                        new_ids.append(eos)
                        self.jump_forward_tokens_total += 1
                        reason = self._append_token(req, eos, None)
        except Exception as e:  # noqa: BLE001 - a broken grammar (or sampler) fails its request only
            logger.warning("request %s failed: %r", req.rid, e)
            reason = {"type": "abort", "message": f"constrained decoding failed: {type(e).__name__}: {e}"}
        if reason is None and req.abort_requested:
            reason = {"type": "abort", "message": "aborted by the client"}
        lps = [lp for lp, _ in logprobs[:len(new_ids)]] if logprobs else None
        if reason is None:
            delta = self.detok.take_delta(req.detok)
            if self.bus.active:
                self.bus.emit(TokenEvent(req.rid, new_ids, delta, lps, len(req.output_ids)))
            if req.stream and delta:
                req.sink(self.output.chunk(req, delta, finished=False))
            return len(new_ids)
        req.drop_drafts()
        if req.kv_len > req.fill_len:  # verified drafts past the stop: their KV goes back too
            self._truncate_kv(req, req.fill_len)
        if req in self.running:
            self.running.remove(req)
        self._finish(req, reason, last_ids=new_ids, last_logprobs=lps)
        return len(new_ids)

    def _append_token(self, req: Req, tok: int, logprob: Optional[tuple]) -> Optional[dict]:
        """Append one output token; returns the finish reason it causes, if any."""
        req.output_ids.append(tok)
        if logprob is not None:
            req.output_token_logprobs.append([logprob[0], tok, None])
            if req.top_logprobs_num and logprob[1] is not None:
                req.output_top_logprobs.append(logprob[1])
        violates = req.grammar is not None and not req.grammar.accept_token(tok)
        self.detok.append(req.detok, [tok])
        p = req.params
        if violates:
            return {"type": "abort", "message": f"token {tok} violates the request's grammar"}
        if len(req.output_ids) >= p.min_new_tokens and (
                (tok in self.eos_ids and not p.ignore_eos) or tok in p.stop_token_ids):
            return {"type": "stop", "matched": tok}
        if req.detok.matched_stop is not None:
            return {"type": "stop", "matched": req.detok.matched_stop}
        if req.grammar is not None and req.grammar.is_terminated():
            return {"type": "stop", "matched": None}
        if len(req.output_ids) >= p.max_new_tokens:
            return {"type": "length", "length": p.max_new_tokens}
        if req.fill_len >= self.limits.max_context:
            return {"type": "length", "length": len(req.output_ids), "message": "reached the context length"}
        return None

    def _plan_jump_forward(self, req: Req) -> DraftPlan:
        """The text the grammar forces next, as certain tokens (appended now) and drafts (verified by the
        next step). Logprob requests get drafts only: every token they return needs the model's logits."""
        p = req.params
        budget = min(p.max_new_tokens - len(req.output_ids), self.limits.max_context - req.fill_len)
        return plan_drafts(req.grammar, self.detok.tokenizer, budget, allow_certain=not req.return_logprob)

    def _forced_eos(self, req: Req) -> Optional[int]:
        """The EOS the grammar forces now (nothing else is allowed): appended without a model step, as
        sampling under the mask would pick it with probability 1."""
        p = req.params
        if (req.return_logprob or p.ignore_eos or len(req.output_ids) >= p.max_new_tokens
                or len(req.output_ids) + 1 < p.min_new_tokens or req.fill_len >= self.limits.max_context):
            return None
        eos = req.grammar.forced_stop_token()
        return eos if eos is not None and eos in self.eos_ids else None

    def _finish(self, req: Req, reason: dict, free: bool = True, last_ids: Optional[list[int]] = None,
                last_logprobs: Optional[list[float]] = None) -> None:
        """Finish a request; ``last_ids`` are the tokens of this step not yet announced to observers."""
        req.finish_reason = reason
        if free:
            self._release(req)
        delta = self.detok.take_delta(req.detok, final=True)
        if self.bus.active and (delta or last_ids):
            self.bus.emit(TokenEvent(req.rid, list(last_ids or []), delta, last_logprobs, len(req.output_ids)))
        self.num_finished += 1
        out = self.output.chunk(req, delta, finished=True)
        if self.bus.active:
            self.bus.emit(FinishEvent(req.rid, out["meta_info"], out["text"]))
        req.sink(out)
