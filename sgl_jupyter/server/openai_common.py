"""Pieces shared by /v1/completions and /v1/chat/completions: OpenAI fields -> engine sampling_params,
finish reasons, usage, and logprobs in both OpenAI layouts."""
from __future__ import annotations

import json
from typing import Any, Optional

from .errors import APIError
from .protocol import SamplingFields
from .state import ServerState


def sampling_params(req: SamplingFields, max_new_tokens: int, state: ServerState) -> dict[str, Any]:
    """The engine's ``sampling_params`` for an OpenAI request (``None`` keeps the engine default)."""
    if max_new_tokens > state.max_context:
        raise APIError(400, f"max_tokens ({max_new_tokens}) exceeds the model's context length "
                            f"({state.max_context} tokens): lower max_tokens", param="max_tokens")
    if req.logit_bias:
        raise APIError(400, "logit_bias is not supported by this server; remove it", param="logit_bias")
    params: dict[str, Any] = {
        "max_new_tokens": max_new_tokens, "min_new_tokens": req.min_tokens,
        "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k, "min_p": req.min_p,
        "presence_penalty": req.presence_penalty, "frequency_penalty": req.frequency_penalty,
        "repetition_penalty": req.repetition_penalty, "stop": req.stop, "stop_token_ids": req.stop_token_ids,
        "ignore_eos": req.ignore_eos, "skip_special_tokens": req.skip_special_tokens,
        "spaces_between_special_tokens": req.spaces_between_special_tokens, "no_stop_trim": req.no_stop_trim,
        "seed": req.seed, "regex": req.regex, "json_schema": req.json_schema, "ebnf": req.ebnf,
    }
    schema = response_format_schema(req)
    if schema is not None:
        if req.regex or req.json_schema or req.ebnf:
            raise APIError(400, "response_format cannot be combined with regex, json_schema or ebnf",
                           param="response_format")
        params["json_schema"] = schema
    return guard_sampling({k: v for k, v in params.items() if v is not None})


# Below float32's resolution a positive top_p rounds to 0 in the engine's sampler, which then keeps no
# token at all (NaN probabilities). 1e-6 means the same thing: only the most likely token survives.
MIN_TOP_P = 1e-6
# The repetition penalty divides logits: a tiny positive one turns them into inf (NaN probabilities).
MIN_REPETITION_PENALTY = 0.01


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def guard_sampling(params: dict[str, Any]) -> dict[str, Any]:
    """Guard the engine against values that pass its range checks but are numerically degenerate."""
    top_p = params.get("top_p")
    if _number(top_p) and 0 < top_p < MIN_TOP_P:
        params["top_p"] = MIN_TOP_P
    rep = params.get("repetition_penalty")
    if _number(rep) and 0 < rep < MIN_REPETITION_PENALTY:
        raise APIError(400, f"repetition_penalty must be in [{MIN_REPETITION_PENALTY}, 2], got {rep!r}",
                       param="repetition_penalty")
    return params


def response_format_schema(req: SamplingFields) -> Optional[str]:
    """``response_format`` -> the JSON schema (a string) the engine's grammar backend constrains to."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json.dumps({"type": "object"})
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise APIError(400, 'response_format {"type": "json_schema"} needs "json_schema": {"schema": {...}}',
                       param="response_format.json_schema")
    return json.dumps(fmt.json_schema.schema_)


def per_choice_params(params: dict[str, Any], index: int) -> dict[str, Any]:
    """One stream per choice: n=1 each, and distinct seeds so that seeded choices differ (as the
    engine does for n>1)."""
    p = dict(params, n=1)
    if p.get("seed") is not None:
        p["seed"] = p["seed"] + index
    return p


def finish_reason(meta: dict) -> tuple[Optional[str], Any]:
    """OpenAI's finish_reason and SGLang's ``matched_stop`` from the engine's meta_info."""
    reason = meta.get("finish_reason")
    if not reason:
        return None, None
    return reason.get("type"), reason.get("matched")


def usage(results: list[dict], n: int) -> dict[str, Any]:
    """Usage over all choices: prompt tokens once per prompt (not per choice), as SGLang counts."""
    metas = [r["meta_info"] for r in results]
    prompt = sum(m["prompt_tokens"] for m in metas[::max(n, 1)])
    completion = sum(m["completion_tokens"] for m in metas)
    cached = sum(m.get("cached_tokens", 0) for m in metas[::max(n, 1)])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _top_dict(entries: Optional[list]) -> Optional[dict[str, float]]:
    if entries is None:
        return None
    out: dict[str, float] = {}
    for lp, _tid, text in entries:
        out.setdefault(text if text is not None else "", lp)
    return out


def completion_logprobs(token_lps: list, top_lps: Optional[list], start_offset: int) -> dict[str, Any]:
    """The legacy completions layout: parallel lists of tokens, logprobs, top-k dicts, text offsets."""
    tokens, logprobs, offsets = [], [], []
    offset = start_offset
    for lp, _tid, text in token_lps:
        text = text or ""
        tokens.append(text)
        logprobs.append(lp)
        offsets.append(offset)
        offset += len(text)
    tops = [_top_dict(e) for e in top_lps] if top_lps is not None else None
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}


def _entry(lp: Optional[float], text: Optional[str]) -> dict[str, Any]:
    text = text or ""
    return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(token_lps: list, top_lps: Optional[list]) -> list[dict[str, Any]]:
    """The chat layout: one ``{token, logprob, bytes, top_logprobs}`` per generated token."""
    content = []
    for i, (lp, _tid, text) in enumerate(token_lps):
        item = _entry(lp, text)
        tops = top_lps[i] if top_lps is not None and i < len(top_lps) else None
        item["top_logprobs"] = [_entry(t_lp, t_text) for t_lp, _t, t_text in (tops or [])]
        content.append(item)
    return content
