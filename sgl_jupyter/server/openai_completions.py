"""POST /v1/completions: OpenAI's legacy completions over the engine (text or token-id prompts, n,
stop, echo, logprobs, usage with cached tokens, SSE streaming with ``stream_options.include_usage``)."""
from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator, Optional, Union

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from .errors import APIError
from .generation import SSE_DONE, EngineStreams, SSEResponse, generate_once, sse
from .openai_common import completion_logprobs, finish_reason, per_choice_params, sampling_params, usage
from .protocol import CompletionRequest
from .state import ServerState

Prompts = tuple[Optional[list[str]], Optional[list[list[int]]]]


def split_prompt(prompt: Union[str, list[str], list[int], list[list[int]]]) -> Prompts:
    """OpenAI's four prompt shapes -> (texts, None) or (None, token-id lists)."""
    if isinstance(prompt, str):
        return [prompt], None
    if not prompt:
        raise APIError(400, "prompt must not be empty", param="prompt")
    if all(isinstance(p, str) for p in prompt):
        return list(prompt), None
    if all(isinstance(p, int) for p in prompt):
        return None, [list(prompt)]
    if any(not p for p in prompt):
        raise APIError(400, "prompt: every token-id list must be non-empty", param="prompt")
    return None, [list(p) for p in prompt]


def _engine_prompt(texts: Optional[list[str]], ids: Optional[list[list[int]]], i: Optional[int] = None) -> dict:
    if texts is not None:
        return {"prompt": texts if i is None else texts[i]}
    return {"input_ids": ids if i is None else ids[i]}


def _prompt_text(state: ServerState, texts: Optional[list[str]], ids: Optional[list[list[int]]], i: int) -> str:
    return texts[i] if texts is not None else state.engine.tokenizer.decode(ids[i])


async def create_completion(state: ServerState, request: Request, req: CompletionRequest) -> Response:
    if req.best_of is not None and req.best_of != req.n:
        raise APIError(400, "best_of is not supported (leave it unset or equal to n)", param="best_of")
    if req.suffix:
        raise APIError(400, "suffix (insertion) is not supported; remove it", param="suffix")
    texts, ids = split_prompt(req.prompt)
    num_prompts = len(texts if texts is not None else ids)
    max_new = 16 if req.max_tokens is None else req.max_tokens
    params = sampling_params(req, max_new, state)
    want_lp = req.logprobs is not None
    logprob_kw = {"return_logprob": want_lp, "logprob_start_len": 0 if (want_lp and req.echo) else -1,
                  "top_logprobs_num": req.logprobs or 0, "return_text_in_logprobs": want_lp}
    rid = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model = state.model_name(req.model)
    weight = num_prompts * req.n
    if req.stream:
        calls = []
        for p in range(num_prompts):
            for j in range(req.n):
                idx = p * req.n + j
                calls.append({**_engine_prompt(texts, ids, p), "sampling_params": per_choice_params(params, j),
                              "rid": f"{rid}-{idx}", **logprob_kw})
        streams = await EngineStreams(state, weight).open(calls)
        events = _stream_events(state, req, streams, texts, ids, rid, created, model)
        return SSEResponse(events, on_close=streams.close)

    results = await generate_once(state, request, weight, **_engine_prompt(texts, ids),
                                  sampling_params=dict(params, n=req.n), rid=rid, **logprob_kw)
    if isinstance(results, dict):
        results = [results]
    choices = []
    for idx, res in enumerate(results):
        meta = res["meta_info"]
        text = res["text"]
        prefix = _prompt_text(state, texts, ids, idx // req.n) if req.echo else ""
        lp = None
        if want_lp:
            token_lps = (meta.get("input_token_logprobs", []) if req.echo else []) + meta["output_token_logprobs"]
            top = None
            if req.logprobs:
                top = (meta.get("input_top_logprobs", []) if req.echo else []) + meta["output_top_logprobs"]
            lp = completion_logprobs(token_lps, top, 0)
        reason, matched = finish_reason(meta)
        choices.append({"index": idx, "text": prefix + text, "logprobs": lp, "finish_reason": reason,
                        "matched_stop": matched})
    body = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices,
            "usage": usage(results, req.n)}
    return JSONResponse(body)


async def _stream_events(state: ServerState, req: CompletionRequest, streams: EngineStreams,
                         texts: Optional[list[str]], ids: Optional[list[list[int]]], rid: str, created: int,
                         model: str) -> AsyncIterator[bytes]:
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    n_choices = len(streams.iterators)
    sent_lps = [0] * n_choices
    offsets = [0] * n_choices
    finals: list[Any] = [None] * n_choices

    def event(idx: int, text: str, lp: Any = None, reason: Any = None, matched: Any = None) -> bytes:
        body = {"id": rid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": idx, "text": text, "logprobs": lp, "finish_reason": reason,
                             "matched_stop": matched}]}
        if include_usage:
            body["usage"] = None
        return sse(body)

    if req.echo:
        for idx in range(n_choices):
            prefix = _prompt_text(state, texts, ids, idx // req.n)
            offsets[idx] = len(prefix)
            yield event(idx, prefix)
    async for idx, chunk in streams.chunks():
        meta = chunk["meta_info"]
        lp = None
        if req.logprobs is not None:
            new = meta["output_token_logprobs"][sent_lps[idx]:]
            top = meta["output_top_logprobs"][sent_lps[idx]:] if req.logprobs else None
            sent_lps[idx] += len(new)
            lp = completion_logprobs(new, top, offsets[idx])
            offsets[idx] += sum(len(t or "") for _, _, t in new)
        reason, matched = finish_reason(meta) if chunk["finished"] else (None, None)
        if chunk["finished"]:
            finals[idx] = chunk
        if chunk["delta"] or chunk["finished"] or (lp and lp["tokens"]):
            yield event(idx, chunk["delta"], lp, reason, matched)
    if include_usage:
        body = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [],
                "usage": usage(finals, req.n)}
        yield sse(body)
    yield SSE_DONE
