"""Token output of the scheduler: sampling a step's logits, committing tokens one at a time (stop checks,
grammar, jump-forward), streaming deltas and finishing requests. A mixin of ``Scheduler``."""
from __future__ import annotations

import logging
import time
from typing import Optional

import torch

from .events import FinishEvent, TokenEvent
from .jump_forward import DraftPlan, mask_admits_only, plan_drafts
from .request import Req
from .sampling import SamplingRow, apply_penalties, sample

logger = logging.getLogger(__name__)


class TokenOutput:
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
            rows.append(SamplingRow(r.params, r.prompt_ids, r.output_ids, banned, r.generator, r.sample_seed))
        if any(r.params.needs_penalties for r in reqs):
            apply_penalties(logits, rows)
        grammar_rows = [i for i, r in enumerate(reqs) if r.grammar is not None and i not in failed]
        if grammar_rows:
            from .constrained import allocate_token_bitmask, apply_token_bitmask, fill_bitmasks

            bitmask = allocate_token_bitmask(len(reqs), logits.shape[-1])
            try:  # all rows at once, on threads, while the GPU still runs this step's forward
                fill_bitmasks([reqs[i].grammar for i in grammar_rows], bitmask, grammar_rows)
            except Exception:  # noqa: BLE001 - row by row, so that only the failing request fails
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
