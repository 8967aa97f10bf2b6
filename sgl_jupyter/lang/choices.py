"""How `select` turns per-choice token logprobs into a decision (SGLang's three methods).

Every method receives, for each choice, the scored tokens as ``[logprob, token_id, text]`` lists
(the choice's own tokens, conditioned on the prompt) and their mean (``normalized_prompt_logprobs``).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional

TokenLogprobs = list[list[Any]]  # [[logprob, token_id, text], ...]


@dataclass
class ChoicesDecision:
    decision: str
    meta_info: Optional[dict[str, Any]] = None


def _argmax_first(values: list[float]) -> int:
    """Index of the largest value; the earliest wins ties (so choice order breaks ties, as in SGLang)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


class ChoicesSamplingMethod(ABC):
    """A rule that picks one choice from its scored tokens."""

    @property
    def requires_unconditional_logprobs(self) -> bool:
        return False

    @abstractmethod
    def __call__(self, *, choices: list[str], normalized_prompt_logprobs: list[float],
                 input_token_logprobs: list[TokenLogprobs], output_token_logprobs: list[TokenLogprobs],
                 unconditional_token_logprobs: Optional[list[TokenLogprobs]] = None) -> ChoicesDecision:
        ...

    def __repr__(self) -> str:
        return type(self).__name__


def _meta(normalized, inputs, outputs, **extra) -> dict[str, Any]:
    return {"normalized_prompt_logprobs": normalized, "input_token_logprobs": inputs,
            "output_token_logprobs": outputs, **extra}


class TokenLengthNormalized(ChoicesSamplingMethod):
    """The choice with the highest mean token logprob (SGLang's default)."""

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs,
                 unconditional_token_logprobs=None) -> ChoicesDecision:
        best = _argmax_first(normalized_prompt_logprobs)
        return ChoicesDecision(choices[best], _meta(normalized_prompt_logprobs, input_token_logprobs,
                                                    output_token_logprobs))


class GreedyTokenSelection(ChoicesSamplingMethod):
    """Compare choices token by token, keeping those with the best logprob at each position.

    A shorter choice is padded with its own mean logprob, so a choice that is a prefix of a longer one
    competes fairly past its end.
    """

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs,
                 unconditional_token_logprobs=None) -> ChoicesDecision:
        width = max(len(tokens) for tokens in input_token_logprobs)
        matrix = []
        for tokens in input_token_logprobs:
            row = [float(t[0]) for t in tokens]
            mean = sum(row) / len(row) if row else float("nan")
            matrix.append(row + [mean] * (width - len(row)))
        remaining = list(range(len(choices)))
        for j in range(width):
            best = max(matrix[i][j] for i in remaining)
            remaining = [i for i in remaining if matrix[i][j] == best]
            if len(remaining) == 1:
                break
        return ChoicesDecision(choices[remaining[0]], _meta(normalized_prompt_logprobs, input_token_logprobs,
                                                            output_token_logprobs, greedy_logprob_matrix=matrix))


class UnconditionalLikelihoodNormalized(ChoicesSamplingMethod):
    """The choice whose tokens gain the most, on average, from the prompt: mean(logp(tok|prompt) - logp(tok)).

    The unconditional logprobs score the choice's tokens on their own; the first has no context, so its
    unconditional logprob (None) counts as 0.
    """

    @property
    def requires_unconditional_logprobs(self) -> bool:
        return True

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs,
                 unconditional_token_logprobs=None) -> ChoicesDecision:
        if unconditional_token_logprobs is None:
            raise ValueError("unconditional_likelihood_normalized needs the unconditional token logprobs")
        scores = []
        for cond, uncond in zip(input_token_logprobs, unconditional_token_logprobs):
            if len(cond) != len(uncond):
                raise ValueError("conditional and unconditional token logprobs must have the same length")
            diffs = [float(c[0]) - float(u[0] or 0.0) for c, u in zip(cond, uncond)]
            scores.append(sum(diffs) / len(diffs))
        best = _argmax_first(scores)
        return ChoicesDecision(choices[best], _meta(
            normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs,
            unconditional_token_logprobs=unconditional_token_logprobs,
            normalized_unconditional_prompt_logprobs=scores))


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()
