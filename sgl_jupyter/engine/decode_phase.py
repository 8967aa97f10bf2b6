"""Decode phase of the scheduler: one token per running request per step, retraction when the KV pool
runs out, and steps that carry grammar-forced tokens and drafts to verify (jump_forward.py). A mixin of
``Scheduler``; the multi-step, overlapped launches are in overlap.py."""
from __future__ import annotations

import logging
from typing import Optional

import torch

from .forward_batch import ForwardBatch, ForwardMode
from .draft_verify import DraftJob, verify_batch
from .jump_forward import verify_drafts
from .request import Req
from .sampling import SamplingRow

logger = logging.getLogger(__name__)


class DecodePhase:
    def _decode_need(self) -> int:
        """KV slots the next decode step writes: one per request, more for those with grammar-forced
        tokens pending or drafts to verify."""
        return sum(r.fill_len - r.kv_len + len(r.draft_ids) for r in self.running)

    def _schedule_decode(self) -> list[Req]:
        if not self.running:
            return []
        need = self._decode_need()
        if self.kv_pool.free_size >= need:  # the common case: one pass over the running requests
            return list(self.running)
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
        jobs: list[tuple[Req, int, Optional[DraftJob]]] = []
        for req, row in drafted:
            jobs.append((req, row, self._draft_job(req, row)))
        ready = [job for _, _, job in jobs if job is not None]
        try:
            results = iter(verify_batch(logits, ready))
        except Exception:  # noqa: BLE001 - request by request, so that only a failing request fails
            results = iter([None] * len(ready))
        for req, row, job in jobs:
            result = next(results) if job is not None else None
            added += self._verify_and_process(req, logits[row:row + len(req.draft_ids) + 1], result)
        self._record_tokens(added)

    def _draft_job(self, req: Req, row: int) -> Optional[DraftJob]:
        """The request's drafts for ``verify_batch``; None when building its rows fails (it is then
        verified alone, where the failure fails it)."""
        drafts, masks = req.draft_ids, req.draft_masks
        try:
            return DraftJob(row, list(drafts), masks, self._draft_rows(req, drafts, masks))
        except Exception:  # noqa: BLE001
            return None

    def _draft_rows(self, req: Req, drafts: list[int], masks: torch.Tensor) -> list[SamplingRow]:
        base = len(req.output_ids)
        return [SamplingRow(req.params, req.prompt_ids, req.output_ids + drafts[:j],
                            self._banned_ids(req, base + j, masks[j]), req.generator, req.sample_seed)
                for j in range(len(drafts) + 1)]

    def _verify_and_process(self, req: Req, logits: torch.Tensor, result: Optional[tuple[int, int]] = None) -> int:
        """Verify a request's drafts (their KV was just computed), give the rejected drafts' slots back,
        and append the accepted drafts and the token after them. ``result``: the verdict of
        ``verify_batch``, else the request is verified here alone. Returns the tokens added."""
        drafts, masks = req.draft_ids, req.draft_masks
        req.drop_drafts()
        n = len(drafts)
        logprobs = torch.log_softmax(logits, dim=-1) if req.return_logprob else None
        try:
            if result is not None:
                accepted, token = result
            else:
                accepted, token = verify_drafts(logits, drafts, masks, self._draft_rows(req, drafts, masks),
                                                self.generator)
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

