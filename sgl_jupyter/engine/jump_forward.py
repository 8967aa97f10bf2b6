"""Jump-forward decoding, exact: speculative decoding with the grammar as the draft model.

When the grammar admits exactly one continuation text (``", "age": `` after the name's closing quote),
``plan_drafts`` tokenises it canonically. Leading tokens the grammar mask admits alone are *certain*:
step-by-step masked sampling picks them with probability 1, so the scheduler appends them at once
(their KV is computed in the next forward). The rest are *drafts*: the next step runs them through
the model together with the request's pending tokens (one extend forward, logits at every draft
position) and ``verify_drafts`` accepts them left to right by the rule step-by-step decoding follows:

* greedy: a draft is accepted iff it is the argmax of the processed, masked logits at its position;
* sampling: a draft is accepted with probability q(draft), q being the request's processed
  distribution there (penalties, grammar mask, bans, temperature, top-k/top-p/min-p); on rejection
  the token is drawn from q with the draft zeroed and renormalised. That is speculative sampling's
  residual for a draft that puts all its mass on one token, so the output distribution is exactly
  that of step-by-step masked sampling.

The first rejected position yields the model's own token instead (a rejection costs no step: the
model may prefer ``"`` + ``age`` to ``"age``, and then the text diverges from the forced string's
canonical tokens only where the model would have); if every draft is accepted, the position after
the last one yields the next token. The grammar masks for all draft positions are computed while
planning (the matcher is left unchanged), so verification needs no matcher calls.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from .constrained import GrammarMatcher, allocate_token_bitmask, apply_token_bitmask
from .sampling import SamplingRow, apply_penalties, ban_tokens, sampling_probs


@dataclass
class DraftPlan:
    """``certain`` tokens are appended now; ``drafts`` wait for verification with ``masks[j]`` (the
    grammar's bitmask before ``drafts[j]``; the last row is the mask after all drafts)."""

    certain: list[int] = field(default_factory=list)
    drafts: list[int] = field(default_factory=list)
    masks: Optional[torch.Tensor] = None  # int32 [len(drafts) + 1, ceil(vocab / 32)]


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def mask_admits_only(mask_row: torch.Tensor, token_ids: Iterable[int]) -> bool:
    """Whether bitmask row ``mask_row`` allows some of ``token_ids`` and no other token."""
    words = mask_row.numpy().view(np.uint32).copy()
    found = False
    for t in token_ids:
        bit = np.uint32(1 << (t & 31))
        if t >> 5 < len(words) and words[t >> 5] & bit:
            found = True
            words[t >> 5] &= ~bit
    return found and not words.any()


def plan_drafts(matcher: GrammarMatcher, tokenizer, max_tokens: int, allow_certain: bool = True) -> DraftPlan:
    """Tokens for the text the grammar forces next, split into certain tokens and drafts (see the module
    docstring); at most ``max_tokens`` in all. The matcher is left as it was."""
    text = matcher.jump_forward() if max_tokens > 0 else None
    if not text:
        return DraftPlan()
    ids = _encode(tokenizer, text)[:max_tokens]
    masks = allocate_token_bitmask(len(ids) + 1, matcher.vocab_size)
    certain, accepted = 0, 0
    try:
        for j, tok in enumerate(ids):
            matcher.fill_bitmask(masks, j)
            if allow_certain and certain == j and mask_admits_only(masks[j], (tok,)):
                certain += 1
            if not matcher.accept_token(tok):  # the canonical tokens do not fit the grammar here: stop
                break
            accepted += 1
        matcher.fill_bitmask(masks, accepted)
    finally:
        matcher.rollback(accepted)
    certain = min(certain, accepted)
    drafts = ids[certain:accepted]
    return DraftPlan(ids[:certain], drafts, masks[certain:accepted + 1] if drafts else None)


def verify_drafts(logits: torch.Tensor, drafts: Sequence[int], masks: torch.Tensor, rows: list[SamplingRow],
                  generator: Optional[torch.Generator] = None) -> tuple[int, int]:
    """Verify ``drafts`` against the model's float32 ``logits`` [len(drafts) + 1, V] (row j: the
    distribution before ``drafts[j]``; modified in place). ``rows[j]`` says how to process row j as the
    sampler would (its ``output_ids`` include the drafts before j). Returns (drafts accepted, the token
    that follows them: the correction at the first rejection, else one sampled after the last draft)."""
    n = len(drafts)
    if any(r.params.needs_penalties for r in rows):
        apply_penalties(logits, rows)
    apply_token_bitmask(logits, masks, range(n + 1))
    ban_tokens(logits, rows)
    params = rows[0].params
    if params.is_greedy:
        best = logits.argmax(dim=-1).tolist()
        for j, d in enumerate(drafts):
            if best[j] != d:
                return j, best[j]
        return n, best[n]
    gen = rows[0].generator or generator
    probs = sampling_probs(logits, rows)
    p_draft = probs[torch.arange(n, device=probs.device), torch.tensor(list(drafts), device=probs.device)].tolist()
    uniforms = torch.rand(n, generator=gen, device=gen.device if gen is not None else probs.device).tolist()
    for j, d in enumerate(drafts):
        if uniforms[j] < p_draft[j]:
            continue
        residual = probs[j].clone()
        residual[d] = 0.0
        total = float(residual.sum())
        if total <= 0.0:  # only reachable through rounding: q put (almost) all its mass on the draft
            continue
        return j, int(torch.multinomial(residual / total, 1, generator=gen))
    return n, int(torch.multinomial(probs[n], 1, generator=gen))
