"""Jump-forward decoding: when the grammar admits exactly one continuation, append it without a model
step per token.

After a request samples a token, ``plan_jump_forward`` asks the matcher for the forced text (e.g.
``", "age": `` after the name's closing quote), tokenises it and advances the matcher over those
tokens. The scheduler then appends them and computes their KV in one extend pass (instead of one
decode step each) before sampling the next free token.

Boundary re-tokenisation (as SGLang does): the forced text is tokenised together with the token(s)
sampled in this step, which have no KV yet, so the result is the tokenizer's own merge (``",`` rather
than ``"`` + ``,``). That keeps the token sequence what the model saw in training and, in practice,
what greedy decoding would have produced token by token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from .constrained import GrammarMatcher


@dataclass(frozen=True)
class JumpForward:
    """Replace the last ``rollback`` output tokens by ``token_ids``; together they spell old tail + ``text``."""

    text: str
    rollback: int
    token_ids: list[int]


def _decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def plan_jump_forward(matcher: GrammarMatcher, tokenizer, output_ids: Sequence[int],
                      fresh_tokens: int = 1, max_new_tokens: Optional[int] = None) -> Optional[JumpForward]:
    """Advance ``matcher`` over the forced continuation and say how to edit ``output_ids``; None (matcher
    unchanged) when nothing is forced or the text cannot be tokenised so that the grammar accepts it.

    ``fresh_tokens``: how many trailing output tokens may be re-tokenised (those sampled this step, whose
    KV is not computed yet; 0 disables boundary re-tokenisation). ``max_new_tokens``: the most the output
    may grow (what is left of the request's max_new_tokens / context); the forced text is cut to fit.
    """
    text = matcher.jump_forward()
    if not text:
        return None
    n_out = len(output_ids)
    for k in sorted({min(fresh_tokens, n_out, matcher.num_accepted), 0}, reverse=True):
        tail = list(output_ids[n_out - k:]) if k else []
        tail_text = _decode(tokenizer, tail) if k else ""
        if "\ufffd" in tail_text:  # the tail ends inside a UTF-8 character: don't re-tokenise it
            continue
        target = tail_text + text
        new = _encode(tokenizer, target)
        if _decode(tokenizer, new) != target:
            continue
        keep = 0
        while keep < min(len(tail), len(new)) and tail[keep] == new[keep]:
            keep += 1
        rollback, part = k - keep, new[keep:]
        if max_new_tokens is not None:
            part = part[:max(max_new_tokens + rollback, 0)]
        if len(part) <= rollback:  # nothing gained
            continue
        matcher.rollback(rollback)
        if matcher.accept_token_ids(part):
            if len(part) < len(new) - keep:  # cut by the budget: say what was really appended
                text = _decode(tokenizer, tail[:keep] + part)[len(tail_text):]
            return JumpForward(text=text, rollback=rollback, token_ids=part)
        restored = matcher.accept_token_ids(tail[keep:])
        assert restored, "re-accepting tokens the matcher accepted before cannot fail"
    return None
