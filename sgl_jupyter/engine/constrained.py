"""Grammar-constrained decoding with xgrammar: compiled-grammar cache, per-request matcher, token bitmask.

One ``GrammarBackend`` per engine owns xgrammar's ``TokenizerInfo`` (vocabulary + stop tokens) and a
thread-safe cache of compiled grammars. ``compile`` runs on the caller's thread (xgrammar releases the
GIL while compiling), so the scheduler keeps decoding other requests meanwhile. The scheduler thread
owns every ``GrammarMatcher``: per step it fills one bitmask row per constrained request, masks the
logits, samples, then feeds the sampled token back with ``accept_token``.

    >>> backend = GrammarBackend(tokenizer, vocab_size=49152)
    >>> compiled = backend.compile("regex", r'{"name": "[^"]+", "age": \\d+}')
    >>> matcher = backend.new_matcher(compiled)
    >>> bitmask = allocate_token_bitmask(batch_size=1, vocab_size=49152)
    >>> matcher.fill_bitmask(bitmask, 0); apply_token_bitmask(logits, bitmask, [0])
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import xgrammar as xgr

from .errors import InvalidRequestError
from .grammar_spec import (  # noqa: F401 - re-exported for callers
    GRAMMAR_KINDS,
    check_json_schema,
    explain_compile_error,
    grammar_key,
    normalize_regex,
    regex_for_choices,
    rewrite_string_lengths,
)


# ---------------------------------------------------------------------------------------------------
# Compiled grammars and matchers
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompiledGrammar:
    """A grammar compiled against one tokenizer; immutable and shared by every request that uses it."""

    kind: str
    spec: str  # canonical spec (the cache key)
    ctx: xgr.CompiledGrammar = field(repr=False)
    compile_seconds: float = 0.0

    @property
    def memory_bytes(self) -> int:
        return int(self.ctx.memory_size_bytes)


class GrammarMatcher:
    """Per-request grammar state; used only from the scheduler thread."""

    def __init__(self, compiled: CompiledGrammar, stop_token_ids: Sequence[int], vocab_size: int):
        self.compiled = compiled
        self._matcher = xgr.GrammarMatcher(compiled.ctx)
        self._stop_token_ids = tuple(stop_token_ids)
        self._vocab_size = vocab_size
        self.num_accepted = 0  # tokens accepted and not rolled back
        self._probe: Optional[torch.Tensor] = None  # 1-row bitmask for forced_stop_token()

    @property
    def vocab_size(self) -> int:
        """Width of the bitmask rows this matcher fills (the model's logits width)."""
        return self._vocab_size

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed-next-token bits into ``bitmask[row]`` (EOS only where the grammar may end)."""
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def accept_token(self, token_id: int) -> bool:
        """Advance by one sampled token; False (state unchanged) if the grammar does not allow it."""
        if self._matcher.is_terminated():
            return False
        ok = self._matcher.accept_token(int(token_id))
        if ok:
            self.num_accepted += 1
        return ok

    def accept_token_ids(self, token_ids: Sequence[int]) -> bool:
        """Accept several tokens atomically: on the first rejection, undo the ones accepted and return False."""
        done = 0
        for t in token_ids:
            if not self.accept_token(t):
                if done:
                    self.rollback(done)
                return False
            done += 1
        return True

    def is_terminated(self) -> bool:
        """The grammar reached an accepting end and a stop token was accepted: nothing more may follow."""
        return self._matcher.is_terminated()

    def is_completed(self) -> bool:
        """The text so far is a complete sentence of the grammar (more text or a stop token may follow)."""
        return self._matcher.is_completed()

    def jump_forward(self) -> Optional[str]:
        """The text every continuation must start with (e.g. ``"name": "`` after ``{``), or None."""
        if self._matcher.is_terminated():
            return None
        try:
            return self._matcher.find_jump_forward_string() or None
        except UnicodeDecodeError:  # the forced bytes end inside a multi-byte character: no jump now
            return None

    def forced_stop_token(self) -> Optional[int]:
        """The stop token, when the grammar is complete and allows nothing but stop tokens next.

        Appending it costs no model step and cannot change the output: under the mask it is the only
        token with non-zero probability.
        """
        if not self._matcher.is_completed() or self._matcher.is_terminated():
            return None
        if self._probe is None:
            self._probe = allocate_token_bitmask(1, self._vocab_size)
        self._matcher.fill_next_token_bitmask(self._probe, 0)
        words = self._probe[0].numpy().view(np.uint32).copy()
        allowed_stops = []
        for t in self._stop_token_ids:
            if t < self._vocab_size and (words[t >> 5] >> np.uint32(t & 31)) & np.uint32(1):
                allowed_stops.append(t)
                words[t >> 5] &= ~np.uint32(1 << (t & 31))
        if allowed_stops and not words.any():
            return allowed_stops[0]
        return None

    def rollback(self, num_tokens: int) -> None:
        """Undo the last ``num_tokens`` accepted tokens (jump-forward drafts are planned ahead, then undone)."""
        if num_tokens <= 0:
            return
        if num_tokens > self.num_accepted:
            raise ValueError(f"cannot roll back {num_tokens} tokens: only {self.num_accepted} were accepted")
        self._matcher.rollback(num_tokens)
        self.num_accepted -= num_tokens

    def reset(self) -> None:
        """Back to the start state (a retracted request restarts its output)."""
        self._matcher.reset()
        self.num_accepted = 0


# ---------------------------------------------------------------------------------------------------
# The backend: tokenizer info + compile cache
# ---------------------------------------------------------------------------------------------------
@dataclass
class GrammarCacheStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    entries: int = 0
    bytes: int = 0
    compile_seconds: float = 0.0


class GrammarBackend:
    """One per engine: owns xgrammar's TokenizerInfo and a thread-safe compiled-grammar cache.

    ``vocab_size`` is the width of the model's logits (may exceed ``len(tokenizer)`` when the lm_head
    is padded); ``eos_ids`` are the ids that end generation (default: the tokenizer's EOS), the only
    ids the bitmask allows where the grammar may end.

    JSON schemas compile with compact separators (``", "``, ``": "``) and no free whitespace: small
    models otherwise tend to emit newlines forever, and fixed separators give jump-forward long
    forced strings.
    """

    def __init__(self, tokenizer, vocab_size: int, *, eos_ids: Optional[Sequence[int]] = None,
                 max_threads: Optional[int] = None, max_cache_bytes: int = 512 << 20):
        if eos_ids is None:
            eos = getattr(tokenizer, "eos_token_id", None)
            eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        self.stop_token_ids = sorted(int(t) for t in eos_ids)
        self.vocab_size = int(vocab_size)
        self.tokenizer = tokenizer
        self.tokenizer_info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_token_ids or None)
        threads = max_threads or max(1, min(8, os.cpu_count() or 1))
        # Our cache (below) is the only one: bounded, keyed by canonical spec, shared compiles deduplicated.
        self._compiler = xgr.GrammarCompiler(self.tokenizer_info, max_threads=threads, cache_enabled=False)
        self._lock = threading.Lock()
        self._cache: "OrderedDict[tuple[str, str], Future]" = OrderedDict()
        self._max_cache_bytes = max_cache_bytes
        self.stats = GrammarCacheStats()

    # -- compile -------------------------------------------------------------------------------------
    def compile(self, kind: str, spec: Union[str, dict, Any] = "") -> CompiledGrammar:
        """Compile (or fetch from the cache) a grammar; raises InvalidRequestError naming the problem.

        Thread-safe; concurrent calls with the same key wait for one compilation.
        """
        key = grammar_key(kind, spec)
        with self._lock:
            fut = self._cache.get(key)
            owner = fut is None
            if owner:
                fut = Future()
                self._cache[key] = fut
                self.stats.misses += 1
            else:
                self._cache.move_to_end(key)
                self.stats.hits += 1
        if not owner:
            return fut.result()
        try:
            compiled = self._compile_uncached(*key)
        except BaseException as e:
            with self._lock:
                self._cache.pop(key, None)  # failures are cheap to recompute; don't let them fill the cache
                self.stats.errors += 1
            fut.set_exception(e)
            raise
        fut.set_result(compiled)
        with self._lock:
            self.stats.compile_seconds += compiled.compile_seconds
            self._evict_locked()
        return compiled

    def _compile_uncached(self, kind: str, spec: str) -> CompiledGrammar:
        t0 = time.perf_counter()
        if kind == "json_schema":
            schema = json.loads(spec)
            check_json_schema(schema)
            if isinstance(schema, dict):
                schema = rewrite_string_lengths(schema)
        try:
            if kind == "regex":
                ctx = self._compiler.compile_regex(normalize_regex(spec))
            elif kind == "json_schema":
                ctx = self._compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)
            elif kind == "ebnf":
                ctx = self._compiler.compile_grammar(spec)
            else:  # json_object (OpenAI's response_format): any JSON object, compact like json_schema
                ctx = self._compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
        except (RuntimeError, ValueError, TypeError) as e:
            raise InvalidRequestError(explain_compile_error(kind, spec, e)) from None
        return CompiledGrammar(kind, spec, ctx, time.perf_counter() - t0)

    def _evict_locked(self) -> None:
        total, done = 0, []
        for key, fut in self._cache.items():
            if fut.done() and fut.exception() is None:
                total += fut.result().memory_bytes
                done.append(key)
        # LRU order: drop the oldest finished entries, always keeping the newest one.
        while total > self._max_cache_bytes and len(done) > 1:
            key = done.pop(0)
            total -= self._cache.pop(key).result().memory_bytes
        self.stats.entries = len(self._cache)
        self.stats.bytes = total

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self.stats.entries = self.stats.bytes = 0

    # -- matchers ------------------------------------------------------------------------------------
    def new_matcher(self, compiled: CompiledGrammar) -> GrammarMatcher:
        return GrammarMatcher(compiled, self.stop_token_ids, self.vocab_size)


# ---------------------------------------------------------------------------------------------------
# Bitmask
# ---------------------------------------------------------------------------------------------------
BATCH_FILL_MIN = 8  # below this many rows the per-matcher loop is as quick as a thread hand-off
_batch_matcher: Optional[Any] = None


def fill_bitmasks(matchers: Sequence["GrammarMatcher"], bitmask: torch.Tensor, rows: Sequence[int]) -> None:
    """``matchers[j].fill_bitmask(bitmask, rows[j])`` for all j at once: xgrammar's batch matcher spreads
    the rows over threads with the GIL released, instead of one serial fill per constrained request on
    every step. Raises if any fill fails (the caller then fills row by row to find the request)."""
    global _batch_matcher
    if len(matchers) < BATCH_FILL_MIN or not hasattr(xgr, "BatchGrammarMatcher"):
        for m, r in zip(matchers, rows):
            m.fill_bitmask(bitmask, r)
        return
    if _batch_matcher is None:
        _batch_matcher = xgr.BatchGrammarMatcher("auto")
    _batch_matcher.batch_fill_next_token_bitmask([m._matcher for m in matchers], bitmask, [int(r) for r in rows])


def allocate_token_bitmask(batch_size: int, vocab_size: int) -> torch.Tensor:
    """int32 [batch_size, ceil(vocab_size / 32)] on CPU, all bits set (everything allowed)."""
    return xgr.allocate_token_bitmask(batch_size, vocab_size)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor,
                        rows: Union[Sequence[int], torch.Tensor]) -> None:
    """Set ``logits[r, t] = -inf`` wherever bit ``t`` of ``bitmask[r]`` is 0, for each ``r`` in ``rows``.

    Bitmask row ``r`` belongs to logits row ``r`` (allocate the bitmask for the whole batch); rows of
    unconstrained requests are simply not listed. ``logits`` may be on CPU or CUDA; the bitmask is
    moved to its device.
    """
    rows = rows.tolist() if isinstance(rows, torch.Tensor) else [int(r) for r in rows]
    if not rows:
        return
    if logits.dim() != 2 or bitmask.dim() != 2 or bitmask.shape[0] != logits.shape[0]:
        raise ValueError(f"bitmask {tuple(bitmask.shape)} must have one row per logits row {tuple(logits.shape)}")
    vocab = min(logits.shape[1], bitmask.shape[1] * 32)
    if logits.device.type == "cpu":
        if logits.dtype in (torch.float32, torch.float16, torch.bfloat16):
            xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab, indices=rows)
            return
    else:
        bitmask = bitmask.to(logits.device, non_blocking=True)
        try:
            xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab, indices=rows)
            return
        except Exception:  # no triton / unsupported device: fall through to the torch version
            pass
    apply_token_bitmask_torch(logits, bitmask, rows)


_SHIFTS: dict[torch.device, torch.Tensor] = {}


def apply_token_bitmask_torch(logits: torch.Tensor, bitmask: torch.Tensor, rows: Sequence[int]) -> None:
    """Reference implementation in plain torch (any device, any float dtype); the test oracle."""
    device = logits.device
    shifts = _SHIFTS.get(device)
    if shifts is None:
        shifts = _SHIFTS[device] = torch.arange(32, device=device, dtype=torch.int32)
    # logits straight out of the model are inference tensors: in-place writes need inference mode
    with torch.inference_mode(logits.is_inference()):
        idx = torch.as_tensor(list(rows), device=device, dtype=torch.long)
        words = bitmask.to(device)[idx]  # [R, W]
        allowed = ((words.unsqueeze(-1) >> shifts) & 1).bool().flatten(1)  # [R, W*32]
        vocab = min(logits.shape[1], allowed.shape[1])
        sub = logits[idx, :vocab].masked_fill(~allowed[:, :vocab], float("-inf"))
        logits[idx, :vocab] = sub
