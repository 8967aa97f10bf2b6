"""Prefill (extend) phase of the scheduler: which waiting requests to admit into one forward, chunked
prefill of long prompts, and the first token of each completed prompt. A mixin of ``Scheduler``: it
reads and writes the scheduler's queues, pools and counters."""
from __future__ import annotations

import logging

import torch

from .forward_batch import ForwardBatch, ForwardMode
from .request import Req
from .scheduler_policy import decode_reserve, order_waiting

logger = logging.getLogger(__name__)


class PrefillPhase:
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
        for req in order_waiting(self.waiting, self.cache, self.limits.schedule_policy):
            if budget <= 0 or self.num_running + len(batch) - (1 if self.chunked else 0) >= self.limits.max_running:
                break
            if self.req_pool.free_rows == 0:
                break
            match = self.cache.match_prefix(req.fill_ids[:req.max_prefix_len])
            need = req.prefill_target - match.length
            full_need = need + decode_reserve(req)
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
            reserved += decode_reserve(req)
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

