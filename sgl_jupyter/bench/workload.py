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


_TOPICS = ["the weather in Shanghai", "a birthday dinner", "learning Python", "a trip to Hangzhou", "saving money",
           "training for a marathon", "a job interview", "growing tomatoes", "reading more books", "moving house",
           "a broken bicycle", "writing a cover letter", "a new puppy", "learning Chinese", "a team meeting",
           "cooking noodles"]


def text_of_tokens(tokenizer, n_tokens: int, rng: random.Random, lead: str = "") -> str:
    """Text of about ``n_tokens`` tokens (at least that many, cut at a sentence) from the sentence pool."""
    text = lead
    while len(tokenizer.encode(text, add_special_tokens=False)) < n_tokens:
        text += (" " if text else "") + rng.choice(_SENTENCES)
    return text


@dataclass
class ChatWorkload:
    """Multi-turn chats: one system prompt shared by every user; ``turns[u][k]`` is user ``u``'s k-th message
    (each user asks about a different topic, so their histories differ after the system prompt)."""

    system: str
    turns: list[list[str]]


def chat_workload(tokenizer, num_users: int, num_turns: int, system_tokens: int, user_tokens: int,
                  seed: int = 0) -> ChatWorkload:
    rng = random.Random(seed)
    system = text_of_tokens(tokenizer, system_tokens, rng,
                            "You are a helpful assistant. Answer briefly and reuse what was said before.")
    turns = [[text_of_tokens(tokenizer, user_tokens, rng,
                             f"User {u}, turn {k + 1}, about {_TOPICS[u % len(_TOPICS)]}:")
              for k in range(num_turns)] for u in range(num_users)]
    return ChatWorkload(system, turns)
