"""POST /v1/chat/completions: messages rendered with the model's own chat template
(``tokenizer.apply_chat_template``), then the same engine path as completions; logprobs in the chat
layout, ``response_format`` JSON through the engine's grammar backend, SSE chunks as OpenAI sends."""
from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator, Union

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from .errors import APIError
from .generation import SSE_DONE, EngineStreams, SSEResponse, generate_once, sse
from .openai_common import chat_logprobs, finish_reason, per_choice_params, sampling_params, usage
from .protocol import ChatCompletionRequest, TextPart
from .state import ServerState

_ROLE_ALIASES = {"developer": "system", "function": "tool"}


def _content_text(content: Union[str, list[TextPart], None], index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.type != "text":
            raise APIError(400, f"messages[{index}].content: only text parts are supported, got "
                                f"{part.type!r} (this server serves a text-only model)",
                           param=f"messages.{index}.content")
        parts.append(part.text or "")
    return "".join(parts)


def render_chat_prompt(state: ServerState, req: ChatCompletionRequest) -> str:
    """The prompt text the model was trained on for these messages."""
    if req.tools:
        raise APIError(400, "tool calling is not supported by this server; remove `tools`", param="tools")
    messages = []
    for i, m in enumerate(req.messages):
        msg: dict[str, Any] = {"role": _ROLE_ALIASES.get(m.role, m.role), "content": _content_text(m.content, i)}
        if m.name:
            msg["name"] = m.name
        messages.append(msg)
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": not req.continue_final_message}
    if req.continue_final_message:
        if messages[-1]["role"] != "assistant":
            raise APIError(400, "continue_final_message needs the last message to be the assistant's",
                           param="continue_final_message")
        kwargs["continue_final_message"] = True
    try:
        return state.engine.tokenizer.apply_chat_template(messages, **kwargs)
    except Exception as e:  # noqa: BLE001 - jinja raises many kinds; all are the request's fault
        raise APIError(400, f"cannot render the messages with the model's chat template: {e}",
                       param="messages") from e


async def create_chat_completion(state: ServerState, request: Request, req: ChatCompletionRequest) -> Response:
    prompt = render_chat_prompt(state, req)
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    params = sampling_params(req, state.max_context if limit is None else limit, state)
    top_k = req.top_logprobs or 0
    if top_k and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    logprob_kw = {"return_logprob": req.logprobs, "top_logprobs_num": top_k,
                  "return_text_in_logprobs": req.logprobs}
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model = state.model_name(req.model)
    if req.stream:
        calls = [{"prompt": prompt, "sampling_params": per_choice_params(params, j), "rid": f"{rid}-{j}",
                  **logprob_kw} for j in range(req.n)]
        streams = await EngineStreams(state, req.n).open(calls)
        return SSEResponse(_stream_events(req, streams, rid, created, model), on_close=streams.close)

    results = await generate_once(state, request, req.n, prompt=prompt, sampling_params=dict(params, n=req.n),
                                  rid=rid, **logprob_kw)
    if isinstance(results, dict):
        results = [results]
    choices = []
    for idx, res in enumerate(results):
        meta = res["meta_info"]
        lp = None
        if req.logprobs:
            lp = {"content": chat_logprobs(meta["output_token_logprobs"], meta.get("output_top_logprobs"))}
        reason, matched = finish_reason(meta)
        choices.append({"index": idx, "message": {"role": "assistant", "content": res["text"]}, "logprobs": lp,
                        "finish_reason": reason, "matched_stop": matched})
    body = {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": choices,
            "usage": usage(results, req.n)}
    return JSONResponse(body)


async def _stream_events(req: ChatCompletionRequest, streams: EngineStreams, rid: str, created: int,
                         model: str) -> AsyncIterator[bytes]:
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    n = len(streams.iterators)
    sent_lps = [0] * n
    finals: list[Any] = [None] * n

    def event(idx: int, delta: dict, lp: Any = None, reason: Any = None, matched: Any = None) -> bytes:
        body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": idx, "delta": delta, "logprobs": lp, "finish_reason": reason,
                             "matched_stop": matched}]}
        if include_usage:
            body["usage"] = None
        return sse(body)

    for idx in range(n):
        yield event(idx, {"role": "assistant", "content": ""})
    async for idx, chunk in streams.chunks():
        meta = chunk["meta_info"]
        lp = None
        if req.logprobs:
            new = meta["output_token_logprobs"][sent_lps[idx]:]
            top = meta.get("output_top_logprobs")
            top = top[sent_lps[idx]:] if top is not None else None
            sent_lps[idx] += len(new)
            lp = {"content": chat_logprobs(new, top)}
        finished = chunk["finished"]
        reason, matched = finish_reason(meta) if finished else (None, None)
        if finished:
            finals[idx] = chunk
        delta = {"content": chunk["delta"]} if chunk["delta"] else {}
        if delta or finished or (lp and lp["content"]):
            yield event(idx, delta, lp, reason, matched)
    if include_usage:
        yield sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [], "usage": usage(finals, req.n)})
    yield SSE_DONE
