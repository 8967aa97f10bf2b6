"""Result dicts in SGLang's shape, built from a request's state."""
from __future__ import annotations

import time

from .request import Req


class OutputBuilder:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def _with_text(self, entries: list, want_text: bool) -> list:
        if not want_text:
            return entries
        return [[lp, tid, self.tokenizer.decode([tid])] for lp, tid, _ in entries]

    def _top_with_text(self, entries: list, want_text: bool) -> list:
        if not want_text:
            return entries
        return [None if e is None else self._with_text(e, True) for e in entries]

    def meta_info(self, req: Req, finished: bool) -> dict:
        now = time.perf_counter()
        meta = {
            "id": req.rid,
            "prompt_tokens": len(req.prompt_ids),
            "completion_tokens": len(req.output_ids),
            "cached_tokens": req.cached_tokens,
            "finish_reason": req.finish_reason if finished else None,
            "e2e_latency": now - req.created,
        }
        if req.first_token_time is not None:
            meta["ttft"] = req.first_token_time - req.created
        if req.return_logprob:
            t = req.return_text_in_logprobs
            meta["input_token_logprobs"] = self._with_text(req.input_token_logprobs, t)
            meta["output_token_logprobs"] = self._with_text(req.output_token_logprobs, t)
            if req.top_logprobs_num:
                meta["input_top_logprobs"] = self._top_with_text(req.input_top_logprobs, t)
                meta["output_top_logprobs"] = self._top_with_text(req.output_top_logprobs, t)
        return meta

    def chunk(self, req: Req, delta: str, finished: bool) -> dict:
        return {"text": req.detok.text[:req.detok.sent], "delta": delta, "output_ids": list(req.output_ids),
                "finished": finished, "meta_info": self.meta_info(req, finished)}
