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
from .jump_forward import plan_jump_forward
from .kv_pool import KVPool, ReqToTokenPool
from .model_runner import ModelRunner
from .output import OutputBuilder
from .prefix_cache import PrefixCache
from .request import Req
from .sampling import SamplingRow, apply_penalties, sample

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


class Scheduler:
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
        # grammar jump-forward (jump_forward.py): forced text appended without a decode step per token
        self.enable_jump_forward = True
        self.jump_forward_tokens_total = 0
        self._recent: deque[tuple[float, int]] = deque(maxlen=256)
        self.last_batch: dict = {}
        self._last_num_tokens = 0
        self._decode_steps = 0

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
        """Abort a request wherever it is. Runs between steps, so no forward is using its slots."""
        found = False
        for req in list(self.waiting):
            if req.rid == rid:
                self.waiting.remove(req)
                self._finish(req, {"type": "abort", "message": "aborted by the client"}, free=False)
                found = True
        for req in list(self.running):
            if req.rid == rid:
                self.running.remove(req)
                self._finish(req, {"type": "abort", "message": "aborted by the client"})
                found = True
        if self.chunked is not None and self.chunked.rid == rid:
            req, self.chunked = self.chunked, None
            self._finish(req, {"type": "abort", "message": "aborted by the client"})
            found = True
        return found

    def abort_all(self, message: str) -> None:
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
        batch = self._schedule_extend()
        if batch:
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
        """KV slots the next decode step writes: one per request, more for those that jumped forward."""
        return sum(r.fill_len - r.kv_len for r in self.running)

    def _schedule_decode(self) -> list[Req]:
        if not self.running:
            return []
        need = self._decode_need()
        if self.kv_pool.free_size < need:
            self.cache.evict(need - self.kv_pool.free_size)
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
        if any(req.fill_len - req.kv_len > 1 for req in batch):
            return self._run_decode_with_jumps(batch)
        slots = self.kv_pool.alloc(len(batch))
        assert slots is not None
        input_ids, positions, rows, prefix_lens = [], [], [], []
        for req, slot in zip(batch, slots.tolist()):
            input_ids.append(req.fill_ids[-1])
            positions.append(req.kv_len)
            rows.append(req.row)
            prefix_lens.append(req.kv_len)
            self.req_pool.table[req.row, req.kv_len] = slot
        fb = ForwardBatch.build(ForwardMode.DECODE, input_ids, positions, slots, rows, prefix_lens,
                                [1] * len(batch), self.req_pool.table, list(range(len(batch))), self.device)
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

    def _run_decode_with_jumps(self, batch: list[Req]) -> None:
        """A decode step where some requests carry several new tokens (text a grammar forced, see
        jump_forward.py): one extend-mode forward over every request's pending tokens, logits at each
        request's last token, so a jump costs no extra step."""
        new_lens = [req.fill_len - req.kv_len for req in batch]
        slots = self.kv_pool.alloc(sum(new_lens))
        assert slots is not None
        input_ids, positions, rows, prefix_lens, logits_rows = [], [], [], [], []
        offset = 0
        for req, n in zip(batch, new_lens):
            start = req.kv_len
            input_ids.extend(req.fill_ids[start:])
            positions.extend(range(start, start + n))
            rows.append(req.row)
            prefix_lens.append(start)
            self.req_pool.write(req.row, start, slots[offset:offset + n])
            offset += n
            logits_rows.append(offset - 1)
        fb = ForwardBatch.build(ForwardMode.EXTEND, input_ids, positions, slots, rows, prefix_lens, new_lens,
                                self.req_pool.table, logits_rows, self.device)
        logits = self.runner.forward(fb)
        self._last_num_tokens = offset
        self.forward_tokens_total += offset
        for req, n in zip(batch, new_lens):
            req.kv_len += n
        self._sample_and_process(batch, logits)

    # ------------------------------------------------------------------ sampling and outputs
    def _sample_and_process(self, reqs: list[Req], logits: torch.Tensor) -> None:
        want_lp = any(r.return_logprob for r in reqs)
        logprobs = torch.log_softmax(logits, dim=-1) if want_lp else None
        rows = []
        for r in reqs:
            banned = ()
            if len(r.output_ids) < r.params.min_new_tokens and not (
                    r.grammar is not None and r.grammar.forced_stop_token() is not None):  # the grammar wins
                banned = tuple(self.eos_ids | set(r.params.stop_token_ids))
            rows.append(SamplingRow(r.params, r.prompt_ids, r.output_ids, banned, r.generator))
        if any(r.params.needs_penalties for r in reqs):
            apply_penalties(logits, rows)
        grammar_rows = [i for i, r in enumerate(reqs) if r.grammar is not None]
        if grammar_rows:
            from .constrained import allocate_token_bitmask, apply_token_bitmask

            bitmask = allocate_token_bitmask(len(reqs), logits.shape[-1])
            for i in grammar_rows:
                reqs[i].grammar.fill_bitmask(bitmask, i)
            apply_token_bitmask(logits, bitmask.to(logits.device), grammar_rows)
        next_ids = sample(logits, rows, self.generator).tolist()
        lp_vals = top = None
        if logprobs is not None:
            idx = torch.tensor(next_ids, device=logprobs.device).view(-1, 1)
            lp_vals = logprobs.gather(1, idx).squeeze(1).tolist()
            k = max(r.top_logprobs_num for r in reqs)
            if k:
                t = logprobs.topk(k, dim=-1)
                top = (t.values.tolist(), t.indices.tolist())
        now = time.perf_counter()
        self._recent.append((now, len(reqs)))
        self.generation_tokens_total += len(reqs)
        for i, (req, tok) in enumerate(zip(reqs, next_ids)):
            if req.first_token_time is None:
                req.first_token_time = now
            req.output_ids.append(tok)
            lp = None
            if req.return_logprob and lp_vals is not None:
                lp = lp_vals[i]
                req.output_token_logprobs.append([lp, tok, None])
                if req.top_logprobs_num and top is not None:
                    n = req.top_logprobs_num
                    req.output_top_logprobs.append([[v, t, None] for v, t in zip(top[0][i][:n], top[1][i][:n])])
            self._process_token(req, tok, lp)

    def _process_token(self, req: Req, tok: int, lp: Optional[float]) -> None:
        reason = None
        new_ids = [tok]
        if req.grammar is not None:
            if not req.grammar.accept_token(tok):
                reason = {"type": "abort", "message": f"token {tok} violates the request's grammar"}
            elif self.enable_jump_forward and not req.return_logprob:
                new_ids = self._grammar_jump_forward(req)
                tok = new_ids[-1]
        self.detok.append(req.detok, new_ids)
        p = req.params
        if reason is not None:
            pass
        elif len(req.output_ids) >= p.min_new_tokens and (
                (tok in self.eos_ids and not p.ignore_eos) or tok in p.stop_token_ids):
            reason = {"type": "stop", "matched": tok}
        elif req.detok.matched_stop is not None:
            reason = {"type": "stop", "matched": req.detok.matched_stop}
        elif req.grammar is not None and req.grammar.is_terminated():
            reason = {"type": "stop", "matched": None}
        elif len(req.output_ids) >= p.max_new_tokens:
            reason = {"type": "length", "length": p.max_new_tokens}
        elif req.fill_len >= self.limits.max_context:
            reason = {"type": "length", "length": len(req.output_ids), "message": "reached the context length"}
        elif req.abort_requested:
            reason = {"type": "abort", "message": "aborted by the client"}
        if reason is None:
            delta = self.detok.take_delta(req.detok)
            if self.bus.active:
                self.bus.emit(TokenEvent(req.rid, new_ids, delta, None if lp is None else [lp],
                                         len(req.output_ids)))
            if req.stream and delta:
                req.sink(self.output.chunk(req, delta, finished=False))
            return
        if req in self.running:
            self.running.remove(req)
        self._finish(req, reason, last_ids=new_ids, last_logprobs=None if lp is None else [lp])

    def _grammar_jump_forward(self, req: Req) -> list[int]:
        """After the grammar accepted the sampled token: append the text it forces next (re-tokenising
        the sampled token with it) and, when the grammar then allows nothing but EOS, the EOS itself.
        Both are what sampling under the mask would produce with probability 1 (up to tokenisation, see
        jump_forward.py), without a model step a token. Returns the tokens this step added."""
        p = req.params
        budget = min(p.max_new_tokens - len(req.output_ids), self.limits.max_context - req.fill_len)
        jf = plan_jump_forward(req.grammar, self.detok.tokenizer, req.output_ids, fresh_tokens=1,
                               max_new_tokens=budget) if budget > 0 else None
        added = 1
        if jf is not None:
            del req.output_ids[len(req.output_ids) - jf.rollback:]
            req.output_ids.extend(jf.token_ids)
            added += len(jf.token_ids) - jf.rollback
        if (len(req.output_ids) < p.max_new_tokens and not p.ignore_eos
                and len(req.output_ids) + 1 >= p.min_new_tokens
                and req.fill_len < self.limits.max_context):
            eos = req.grammar.forced_stop_token()
            if eos is not None and eos in self.eos_ids and req.grammar.accept_token(eos):
                req.output_ids.append(eos)
                added += 1
        self.jump_forward_tokens_total += added - 1
        self.generation_tokens_total += added - 1
        return req.output_ids[-added:]

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
