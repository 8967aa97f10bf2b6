"""Deterministic synthetic workloads (no data set downloads): prompts of mixed lengths."""
from __future__ import annotations

import random
from dataclasses import dataclass

_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.", "Large language models predict the next token.",
    "上海是中国最大的城市之一。", "Caching the prefix saves recomputation.", "Rain is expected tomorrow afternoon.",
    "Paged attention stores keys and values in fixed-size slots.", "北京的秋天很美。",
    "Continuous batching admits new requests between decode steps.", "Please summarise the paragraph above.",
]


@dataclass
class Request:
    prompt: str
    max_new_tokens: int


def mixed_requests(n: int, min_in: int = 1, max_in: int = 12, min_out: int = 16, max_out: int = 64,
                   seed: int = 0) -> list[Request]:
    """``n`` prompts of ``min_in..max_in`` sentences, each with its own output length."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randint(min_in, max_in)
        text = f"Request {i}. " + " ".join(rng.choice(_SENTENCES) for _ in range(k))
        out.append(Request(text, rng.randint(min_out, max_out)))
    return out
