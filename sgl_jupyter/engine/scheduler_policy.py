"""Admission policy knobs and the order in which waiting requests are considered for prefill."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .prefix_cache import PrefixCache
    from .request import Req

# Decode tokens reserved per running request when admitting new ones (a fraction of what it may still
# generate, clipped): over-admission is caught by retraction, under-admission wastes the batch.
NEW_TOKEN_RATIO = 0.3
RESERVE_CLIP = 256
LPM_MAX_QUEUE = 128  # beyond this many waiting requests, longest-prefix-first costs more than it saves


@dataclass
class SchedulerLimits:
    max_running: int
    max_context: int
    chunked_prefill_size: int
    max_prefill_tokens: int
    schedule_policy: str = "lpm"
    # a running stream waits at most this long between decode steps while prefills are admitted (0: no
    # bound, prefill first): otherwise a burst of admissions runs its prefills back to back and every
    # running stream stalls for all of them
    max_decode_gap_s: float = 0.0



def decode_reserve(req: "Req") -> int:
    """KV tokens held back for a running (or admitted) request's future decode steps."""
    return int(min(req.remaining_new_tokens, RESERVE_CLIP) * NEW_TOKEN_RATIO)


def order_waiting(waiting: "list[Req]", cache: "PrefixCache", policy: str) -> "list[Req]":
    """Waiting requests in admission order. "lpm": longest cached prefix first while the queue is short
    enough for the prefix matches to be cheap; beyond that (a whole data set submitted at once) the
    requests with the most tokens left to generate first, so the longest outputs start early and do not
    make a long tail of small decode batches at the end (longest-processing-time-first). "fcfs": arrival
    order. Python's sort is stable: ties keep arrival order."""
    reqs = list(waiting)
    if policy == "lpm" and len(reqs) <= LPM_MAX_QUEUE:
        lens = {id(r): cache.match_prefix(r.fill_ids[:r.max_prefix_len]).length for r in reqs}
        reqs.sort(key=lambda r: -lens[id(r)])
    elif policy == "lpm":
        reqs.sort(key=lambda r: -r.remaining_new_tokens)
    return reqs
