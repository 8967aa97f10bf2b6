"""The seam between programs and a model: one small interface, two implementations.

A backend implements `_request` (one call of SGLang's /generate, in its dict shape) and
`_request_stream`; everything a program needs (generate, stream, select scoring, prefix caching) is
built on those here, so the in-process Engine and the HTTP endpoint behave the same.
"""
from __future__ import annotations

import json
import warnings
from typing import Any, Iterator, Optional, Union

from ..chat_template import ChatTemplate, get_chat_template
from ..choices import ChoicesDecision, ChoicesSamplingMethod, token_length_normalized
from ..ir import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR, SglSamplingParams

# How many prompt tokens before the prompt's end `select` asks logprobs for: room for a choice's first
# token to merge with the prompt's last ones (token healing) and still be scored from the merge point.
_SELECT_LOOKBACK = 4

Texts = Union[str, list[str]]


class BaseBackend:
    """What the interpreter calls. Subclasses implement `_request`, `_request_stream` and the metadata."""

    is_chat_model = False
    support_concate_and_append = False

    def __init__(self) -> None:
        self.chat_template: ChatTemplate = get_chat_template("default")

    # ------------------------------------------------------------------ to implement
    def _request(self, *, text: Optional[Texts] = None, input_ids: Any = None, sampling_params: dict,
                 rid: Optional[str] = None, **top_level: Any) -> Union[dict, list[dict]]:
        """One /generate call: returns SGLang's result dict (or a list for a list of prompts)."""
        raise NotImplementedError

    def _request_stream(self, *, text: str, sampling_params: dict, rid: Optional[str] = None,
                        **top_level: Any) -> Iterator[tuple[str, dict]]:
        """Stream one /generate call: yields (new text, meta_info)."""
        raise NotImplementedError

    def get_model_name(self) -> str:
        raise NotImplementedError

    def abort(self, rid: str) -> None:
        """Stop a request in flight (best effort)."""

    def flush_cache(self) -> Any:
        return None

    def get_server_info(self) -> Any:
        return None

    def shutdown(self) -> None:
        pass

    # ------------------------------------------------------------------ the interpreter's interface
    def get_chat_template(self) -> ChatTemplate:
        return self.chat_template

    def begin_program(self, s: Any) -> None:
        pass

    def end_program(self, s: Any) -> None:
        pass

    def cache_prefix(self, prefix_str: str) -> None:
        """Prefill `prefix_str` only (max_new_tokens=0): later requests sharing it hit the prefix cache."""
        if prefix_str:
            self._request(text=prefix_str, sampling_params={"max_new_tokens": 0})

    def commit_lazy_operations(self, s: Any) -> None:
        self.cache_prefix(s.text_)

    def generate(self, s: Any, sampling_params: SglSamplingParams) -> tuple[Any, dict]:
        params, top = self._to_request(sampling_params)
        rid = s.new_rid()
        try:
            out = self._request(text=s.text_, sampling_params=params, rid=rid, **top)
        finally:
            s.done_rid(rid)
        if isinstance(out, list):  # n > 1
            return [o["text"] for o in out], [o["meta_info"] for o in out]
        return out["text"], out["meta_info"]

    def generate_stream(self, s: Any, sampling_params: SglSamplingParams) -> Iterator[tuple[str, dict]]:
        params, top = self._to_request(sampling_params)
        if params.get("n", 1) not in (None, 1):
            raise ValueError("stream=True generates one completion per gen: n must be 1")
        rid = s.new_rid()
        try:
            yield from self._request_stream(text=s.text_, sampling_params=params, rid=rid, **top)
        finally:
            s.done_rid(rid)

    def select(self, s: Any, choices: list[str], temperature: float,
               choices_method: Optional[ChoicesSamplingMethod] = None) -> ChoicesDecision:
        """Score each choice's tokens after the prompt and let `choices_method` pick one.

        Each choice is scored on exactly its own tokens: where `prompt + choice` tokenizes differently from
        the prompt near its end (a merged boundary token), scoring starts at the first differing token.
        """
        if temperature > 1e-5:
            raise ValueError("select() decides greedily: temperature must be 0 "
                             "(sample with gen(...) and a regex if you need randomness)")
        method = choices_method or token_length_normalized
        prompt = s.text_
        if not prompt:
            raise ValueError("select() needs text before it: a text's first token has no probability to score")
        warm = self._request(text=prompt, sampling_params={"max_new_tokens": 0})
        n_prompt = int(warm["meta_info"]["prompt_tokens"])
        start = max(n_prompt - _SELECT_LOOKBACK, 0)
        outs = self._request(text=[prompt + c for c in choices] + [prompt],
                             sampling_params={"max_new_tokens": 0, "temperature": 0},
                             return_logprob=True, return_text_in_logprobs=True, logprob_start_len=start)
        tail_ids = [entry[1] for entry in outs[-1]["meta_info"]["input_token_logprobs"]]
        input_token_logprobs, output_token_logprobs, normalized = [], [], []
        for choice, out in zip(choices, outs[:-1]):
            entries = out["meta_info"]["input_token_logprobs"]
            same = 0
            while same < min(len(tail_ids), len(entries)) and entries[same][1] == tail_ids[same]:
                same += 1
            scored = [list(e) for e in entries[same:] if e[0] is not None]
            if not scored:
                raise ValueError(f"select(): choice {choice!r} adds no token to score after the prompt")
            input_token_logprobs.append(scored)
            output_token_logprobs.append(out["meta_info"].get("output_token_logprobs", []))
            normalized.append(sum(float(e[0]) for e in scored) / len(scored))
        unconditional = None
        if method.requires_unconditional_logprobs:
            outs = self._request(input_ids=[[e[1] for e in scored] for scored in input_token_logprobs],
                                 sampling_params={"max_new_tokens": 0}, return_logprob=True,
                                 return_text_in_logprobs=True, logprob_start_len=0)
            unconditional = [o["meta_info"]["input_token_logprobs"] for o in outs]
        return method(choices=list(choices), normalized_prompt_logprobs=normalized,
                      input_token_logprobs=input_token_logprobs, output_token_logprobs=output_token_logprobs,
                      unconditional_token_logprobs=unconditional)

    # ------------------------------------------------------------------ helpers
    def _to_request(self, sp: SglSamplingParams) -> tuple[dict, dict]:
        """SglSamplingParams -> (/generate sampling_params, top-level logprob fields)."""
        sp = sp.merged(SglSamplingParams())
        if sp.dtype is not None:
            regex, extra_stop = _dtype_regex(sp.dtype)
            if sp.regex is not None:
                warnings.warn(f"gen(): both dtype={sp.dtype!r} and regex are set; dtype wins (as in SGLang)")
            sp.regex = regex
            if extra_stop:
                stop = [sp.stop] if isinstance(sp.stop, str) else list(sp.stop or [])
                sp.stop = stop + [x for x in extra_stop if x not in stop]
        if isinstance(sp.json_schema, dict):
            sp.json_schema = json.dumps(sp.json_schema)
        params = sp.to_srt_kwargs()
        top = {}
        for key in ("return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs"):
            value = getattr(sp, key)
            if value is not None:
                top[key] = value
        return params, top


def _dtype_regex(dtype: Any) -> tuple[str, list[str]]:
    if dtype in ("int", int):
        return REGEX_INT, [" ", "\n"]
    if dtype in ("float", float):
        return REGEX_FLOAT, [" ", "\n"]
    if dtype in ("str", str):
        return REGEX_STR, []
    if dtype in ("bool", bool):
        return REGEX_BOOL, []
    raise ValueError(f"gen(dtype=...) must be int, float, str or bool, got {dtype!r}")
