"""SamplingParams (SGLang's names and semantics) and the batched sampler."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Sequence

import torch

from .errors import InvalidRequestError

_GREEDY_EPS = 1e-6


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    n: int = 1
    seed: Optional[int] = None
    regex: Optional[str] = None
    json_schema: Optional[str] = None
    ebnf: Optional[str] = None

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "SamplingParams":
        """Build from a request dict: ``None`` values mean default, unknown keys are ignored (SGLang's
        client sends fields we may not know); ``max_tokens`` is accepted for ``max_new_tokens``."""
        if d is None:
            d = {}
        if isinstance(d, SamplingParams):
            return d
        if not isinstance(d, dict):
            raise InvalidRequestError(f"sampling_params must be a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if value is None:
                continue
            if key == "max_tokens":
                key = "max_new_tokens"
            if key in known:
                kwargs[key] = value
        params = cls(**kwargs)
        params.normalize_and_validate()
        return params

    def normalize_and_validate(self) -> None:
        def bad(name: str, rule: str) -> None:
            raise InvalidRequestError(f"sampling_params.{name} {rule}, got {getattr(self, name)!r}")

        def number(name: str, kind: type) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
                bad(name, f"must be {'an integer' if kind is int else 'a number'}")
            setattr(self, name, kind(v))

        for name in ("max_new_tokens", "min_new_tokens", "top_k", "n"):
            number(name, int)
        for name in ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty"):
            number(name, float)
        if self.max_new_tokens < 0:
            bad("max_new_tokens", "must be >= 0")
        if self.min_new_tokens < 0:
            bad("min_new_tokens", "must be >= 0")
        if self.min_new_tokens > self.max_new_tokens:
            raise InvalidRequestError(
                f"sampling_params.min_new_tokens ({self.min_new_tokens}) must be <= max_new_tokens ({self.max_new_tokens})")
        if not 0.0 <= self.temperature <= 100.0:
            bad("temperature", "must be in [0, 100]")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", "must be in (0, 1]")
        if self.top_k == 0 or self.top_k < -1:
            bad("top_k", "must be -1 (disabled) or >= 1")
        if not 0.0 <= self.min_p <= 1.0:
            bad("min_p", "must be in [0, 1]")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            bad("frequency_penalty", "must be in [-2, 2]")
        if not -2.0 <= self.presence_penalty <= 2.0:
            bad("presence_penalty", "must be in [-2, 2]")
        if not 0.01 <= self.repetition_penalty <= 2.0:
            bad("repetition_penalty", "must be in [0.01, 2]")
        if not 1 <= self.n <= 128:
            bad("n", "must be in [1, 128]")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) for s in self.stop):
            bad("stop", "must be a string or a list of strings")
        self.stop = [s for s in self.stop if s]
        if isinstance(self.stop_token_ids, int):
            self.stop_token_ids = [self.stop_token_ids]
        if not isinstance(self.stop_token_ids, (list, tuple)) or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids):
            bad("stop_token_ids", "must be a list of non-negative integers")
        self.stop_token_ids = list(self.stop_token_ids)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            bad("seed", "must be an integer")
        if isinstance(self.json_schema, (dict, list)):
            self.json_schema = json.dumps(self.json_schema)
        for name in ("regex", "json_schema", "ebnf"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                bad(name, "must be a string")
        if sum(x is not None for x in (self.regex, self.json_schema, self.ebnf)) > 1:
            raise InvalidRequestError("only one of sampling_params.regex, json_schema and ebnf may be set")
        for name in ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "must be a boolean")

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS or self.top_k == 1

    @property
    def grammar_spec(self) -> Optional[tuple[str, str]]:
        for kind in ("regex", "json_schema", "ebnf"):
            v = getattr(self, kind)
            if v is not None:
                return kind, v
        return None

    @property
    def needs_penalties(self) -> bool:
        return self.frequency_penalty != 0.0 or self.presence_penalty != 0.0 or self.repetition_penalty != 1.0


@dataclass
class SamplingRow:
    """What the sampler needs to know about one request of the batch."""

    params: SamplingParams
    prompt_ids: Sequence[int]
    output_ids: Sequence[int]
    banned_ids: Sequence[int] = ()  # EOS/stop ids while min_new_tokens is not reached
    generator: Optional[torch.Generator] = None
    seed: Optional[int] = None  # the request's sampling seed (Req.sample_seed): on CUDA, with the position,
    position: Optional[int] = None  # the token's draw (default: the next output's index in the sequence)

    @property
    def step_seed(self) -> int:
        pos = self.position if self.position is not None else len(self.prompt_ids) + len(self.output_ids)
        return step_seed(self.seed or 0, pos)


def step_seed(seed: int, position: int) -> int:
    """The device sampler's seed for the token at ``position`` of a request seeded ``seed``. The same
    formula runs on the device inside multi-step decode graphs (``step_seeds``), so a seeded request draws
    the same tokens whatever its batch and whichever path (eager step or graph launch) samples it."""
    return (seed & 0x7FFFFFFF) * 1_000_003 + position


def step_seeds(seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``step_seed`` on device tensors (seeds already masked to 31 bits; no int64 overflow)."""
    return seeds * 1_000_003 + positions


def apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> None:
    """Frequency/presence penalties over generated tokens, repetition penalty over prompt + output (HF-style)."""
    vocab = logits.shape[-1]
    for i, row in enumerate(rows):
        p = row.params
        if not p.needs_penalties:
            continue
        if (p.frequency_penalty or p.presence_penalty) and row.output_ids:
            ids = torch.tensor(row.output_ids, dtype=torch.long, device=logits.device)
            counts = torch.zeros(vocab, dtype=logits.dtype, device=logits.device).scatter_add_(
                0, ids, torch.ones_like(ids, dtype=logits.dtype))
            logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(row.prompt_ids) | set(row.output_ids)), dtype=torch.long,
                                device=logits.device)
            vals = logits[i, seen]
            logits[i, seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)


def filter_top_k_top_p_min_p(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                             min_p: torch.Tensor) -> torch.Tensor:
    """Zero out tokens outside top-k / nucleus top-p / min-p, per row; returns renormalised probs."""
    sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)
    vocab = probs.shape[-1]
    ranks = torch.arange(vocab, device=probs.device).unsqueeze(0)
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab)).unsqueeze(1)
    keep = ranks < k
    cum = sorted_probs.cumsum(dim=-1)
    # top_p >= 1 is off: a float32 cumsum can reach 1 before the tail and would cut it
    keep &= ((cum - sorted_probs) < top_p.unsqueeze(1)) | (top_p.unsqueeze(1) >= 1.0)
    keep &= sorted_probs >= min_p.unsqueeze(1) * sorted_probs[:, :1]
    keep[:, 0] = True  # the most likely token always survives (a top_p that rounds to 0, say)
    sorted_probs = sorted_probs * keep
    out = torch.zeros_like(probs).scatter_(1, sorted_idx, sorted_probs)
    return out / out.sum(dim=-1, keepdim=True)


def ban_tokens(logits: torch.Tensor, rows: list[SamplingRow]) -> None:
    """Set each row's banned ids (EOS/stop ids before min_new_tokens) to -inf, in place."""
    for i, row in enumerate(rows):
        if row.banned_ids:
            logits[i, list(row.banned_ids)] = float("-inf")


def sampling_probs(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """The distribution ``sample`` draws from for non-greedy rows: temperature, then top-k / top-p /
    min-p, from logits that already carry penalties, grammar masks and bans."""
    device = logits.device
    temps = torch.tensor([max(r.params.temperature, _GREEDY_EPS) for r in rows], device=device, dtype=logits.dtype)
    probs = torch.softmax(logits / temps.unsqueeze(1), dim=-1)
    if any(r.params.top_k > 0 or r.params.top_p < 1.0 or r.params.min_p > 0.0 for r in rows):
        probs = filter_top_k_top_p_min_p(
            probs,
            torch.tensor([r.params.top_k for r in rows], device=device),
            torch.tensor([r.params.top_p for r in rows], device=device, dtype=logits.dtype),
            torch.tensor([r.params.min_p for r in rows], device=device, dtype=logits.dtype),
        )
    return probs


def sample(logits: torch.Tensor, rows: list[SamplingRow], generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Sample one token per row from processed float32 logits [B, V] (modified in place)."""
    ban_tokens(logits, rows)
    greedy = [r.params.is_greedy for r in rows]
    if all(greedy):
        return logits.argmax(dim=-1)
    if logits.is_cuda and all(r.seed is not None for r in rows) and _device_sampler() is not None:
        return _sample_on_device(logits, rows)
    probs = sampling_probs(logits, rows)
    out = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    for i, row in enumerate(rows):
        if greedy[i]:
            out[i] = logits[i].argmax()
        elif row.generator is not None:
            out[i] = torch.multinomial(probs[i], 1, generator=row.generator)[0]
    return out


def _device_sampler():
    """kernels.sampling.sample_triton where Triton runs, else None."""
    try:
        from ..kernels._triton import HAS_TRITON
        from ..kernels.sampling import sample_triton
    except ImportError:
        return None
    return sample_triton if HAS_TRITON else None


def sample_params_tensors(rows: list[SamplingRow], device) -> tuple[torch.Tensor, ...]:
    """Per-row temperature, top_k, top_p, min_p and step seed tensors for the device sampler."""
    ps = [r.params for r in rows]
    return (torch.tensor([p.temperature for p in ps], dtype=torch.float32, device=device),
            torch.tensor([p.top_k for p in ps], dtype=torch.int64, device=device),
            torch.tensor([p.top_p for p in ps], dtype=torch.float32, device=device),
            torch.tensor([p.min_p for p in ps], dtype=torch.float32, device=device),
            torch.tensor([r.step_seed for r in rows], dtype=torch.int64, device=device))


def _sample_on_device(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """The Triton sampler (no sort, no host sync) with per-request step seeds, as the multi-step decode
    graphs run it. A row left with no token to draw (every logit -inf) raises, as torch.multinomial does."""
    out = _device_sampler()(logits, *sample_params_tensors(rows, logits.device))
    if not bool(torch.isfinite(logits.gather(1, out.view(-1, 1))).all()):
        raise RuntimeError("no token left to sample: every token of a row is masked")
    return out
