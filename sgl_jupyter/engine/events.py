"""Engine events for observers (widgets, metrics). Callbacks run on the scheduler thread, so they
must be quick: copy what you need and hand work to another thread."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

logger = logging.getLogger(__name__)


@dataclass
class TokenEvent:
    rid: str
    token_ids: list[int]
    delta: str
    logprobs: Optional[list[float]]
    completion_tokens: int
    time: float = field(default_factory=time.time)


@dataclass
class FinishEvent:
    rid: str
    meta_info: dict
    text: str = ""
    time: float = field(default_factory=time.time)


@dataclass
class StepEvent:
    mode: str  # "extend" | "decode"
    batch_size: int
    num_tokens: int
    running: int
    queued: int
    kv_used: int
    kv_total: int
    cache_hit_rate: float
    tokens_per_s: float
    duration_s: float
    time: float = field(default_factory=time.time)


@dataclass
class CacheEvent:
    version: int
    time: float = field(default_factory=time.time)


Event = Any


class EventBus:
    def __init__(self) -> None:
        self._subs: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self._subs)

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        with self._lock:
            self._subs = self._subs + [callback]

        def unsubscribe() -> None:
            with self._lock:
                self._subs = [s for s in self._subs if s is not callback]

        return unsubscribe

    def emit(self, event: Event) -> None:
        for cb in self._subs:
            try:
                cb(event)
            except Exception:  # noqa: BLE001 - an observer must never break the engine
                logger.exception("engine event subscriber failed")
