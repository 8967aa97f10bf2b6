"""Req: one sequence's whole life in the engine, with the properties the scheduler asks."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from .detokenizer import DecodeState
from .sampling import SamplingParams


@dataclass(eq=False)
class Req:
    rid: str
    prompt_ids: list[int]
    params: SamplingParams
    sink: Callable[[dict], None]
    detok: DecodeState
    stream: bool = False
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False
    grammar: Any = None  # GrammarMatcher for constrained requests
    generator: Optional[torch.Generator] = None
    sample_seed: Optional[int] = None  # the device sampler's per-request seed (sampling.step_seed)
    output_ids: list[int] = field(default_factory=list)
    # grammar jump-forward (jump_forward.py): forced tokens proposed for the next step, unverified; they
    # have no KV outside that step and are not part of output_ids (nor of what the prefix cache sees)
    draft_ids: list[int] = field(default_factory=list)
    draft_masks: Optional[torch.Tensor] = None  # grammar bitmask before each draft and after the last
    # KV bookkeeping (owned by the scheduler)
    row: Optional[int] = None  # ReqToTokenPool row while admitted
    kv_len: int = 0  # tokens of fill_ids whose KV is in the row
    cache_node: Any = None  # locked prefix-cache node
    cache_protected_len: int = 0  # the first tokens of the row belong to the prefix cache
    cached_tokens: int = 0
    admitted_once: bool = False
    # results
    finish_reason: Optional[dict] = None
    input_token_logprobs: list = field(default_factory=list)
    input_top_logprobs: list = field(default_factory=list)
    output_token_logprobs: list = field(default_factory=list)
    output_top_logprobs: list = field(default_factory=list)
    input_logprobs_done: bool = False
    created: float = field(default_factory=time.perf_counter)
    first_token_time: Optional[float] = None
    abort_requested: bool = False

    def __post_init__(self) -> None:
        assert self.prompt_ids, "a request needs at least one prompt token"

    @property
    def fill_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def last_id(self) -> int:
        """``fill_ids[-1]`` without building the list (the decode input, per request and step)."""
        return self.output_ids[-1] if self.output_ids else self.prompt_ids[-1]

    @property
    def fill_len(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def prefill_target(self) -> int:
        """KV needed before decoding: the whole prompt for a new request; for a resumed (retracted)
        one, everything but its last sampled token, which the next decode step feeds."""
        return self.fill_len - 1 if self.output_ids else self.fill_len

    @property
    def is_prefilling(self) -> bool:
        return self.kv_len < self.prefill_target

    @property
    def remaining_new_tokens(self) -> int:
        return max(self.params.max_new_tokens - len(self.output_ids), 0)

    @property
    def wants_input_logprobs(self) -> bool:
        return self.return_logprob and self.logprob_start_len >= 0 and not self.input_logprobs_done

    @property
    def max_prefix_len(self) -> int:
        """How much of fill_ids may come from the prefix cache: at least one token must be computed
        to get logits, and input logprobs need the hidden state before their first token."""
        limit = self.fill_len - 1 if not self.output_ids else self.prefill_target
        if self.wants_input_logprobs:
            limit = min(limit, max(self.logprob_start_len - 1, 0))
        return max(limit, 0)

    def drop_drafts(self) -> None:
        self.draft_ids, self.draft_masks = [], None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
