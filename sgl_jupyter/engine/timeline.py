"""The engine's own history since load: one point per `interval` seconds while it runs, so a chart made
after the work (``%sgl_stats`` at the end of a notebook) shows every cell's steps, not an empty chart.

The scheduler thread calls `on_step` after every step whether or not anyone listens to events (O(1); a
point at most every `interval` s), so no event subscription - and no per-token event - is needed to keep
it. Readers on other threads call `close_idle` then `points()`, which copies.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Optional


@dataclass
class TimelinePoint:
    """One sample: `t` seconds since the engine loaded; tokens/s generated since the previous point."""

    t: float
    tokens_per_s: float
    running: int
    queued: int
    hit_rate: float
    generated: int  # generation_tokens_total at this point (the %sgl_stats table's "generated tokens")


class EngineTimeline:
    """A bounded, thread-safe step history. Each busy run starts and ends with a 0 tokens/s point, so idle
    time between cells shows as a drop to 0, not as a ramp between two busy points."""

    def __init__(self, interval: float = 0.25, maxlen: int = 4000, t0: Optional[float] = None):
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self.interval = interval
        self.t0 = time.time() if t0 is None else t0
        self._points: deque[TimelinePoint] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._busy = False
        self._mark_t = 0.0  # time and token total of the last point of the current busy run
        self._mark_tokens = 0
        self._last_step = 0.0
        self._last: tuple[int, int, float, int] = (0, 0, 0.0, 0)  # running, queued, hit rate, tokens after it
        self.version = 0  # bumped on every append (readers re-read only when it moved)

    def on_step(self, generated_total: int, running: int, queued: int, hit_rate: float,
                now: Optional[float] = None) -> None:
        """Scheduler thread, after each step: fold it in; append a point when `interval` has passed."""
        now = time.time() if now is None else now
        with self._lock:
            if self._busy and now - self._last_step > 2 * self.interval:
                self._end_run(self._last[3], self._last[2])  # the engine was idle in between
            if not self._busy:
                self._busy = True
                if self._points:  # at rest until just now: the chart's lines rise here, not across the gap
                    self._append(now - 0.001, 0.0, 0, 0, self._last[2], self._last[3])
                self._append(now, 0.0, running, queued, hit_rate, generated_total)
                # the run's rates count from this point's time, which _append may have moved past `now` (a run
                # that close_idle ended while this step waited for the lock): tokens/s x dt stays the tokens
                self._mark_t, self._mark_tokens = max(now, self.t0 + self._points[-1].t), generated_total
            elif now - self._mark_t >= self.interval:
                tps = (generated_total - self._mark_tokens) / (now - self._mark_t)
                self._mark_t, self._mark_tokens = now, generated_total
                self._append(now, tps, running, queued, hit_rate, generated_total)
            self._last_step = now
            self._last = (running, queued, hit_rate, generated_total)

    def close_idle(self, generated_total: int, hit_rate: float, now: Optional[float] = None) -> None:
        """Reader side: if no step came for `2 * interval` s, end the busy run (its tokens since the last
        point, then 0 tokens/s) with the totals read now, so the last point agrees with the engine's counters."""
        now = time.time() if now is None else now
        with self._lock:
            if self._busy and now - self._last_step > 2 * self.interval:
                self._end_run(generated_total, hit_rate)

    def _end_run(self, generated_total: int, hit_rate: float) -> None:
        if generated_total != self._mark_tokens and self._last_step > self._mark_t:
            tps = (generated_total - self._mark_tokens) / (self._last_step - self._mark_t)
            self._append(self._last_step, tps, self._last[0], self._last[1], hit_rate, generated_total)
        self._append(self._last_step + self.interval, 0.0, 0, 0, hit_rate, generated_total)
        self._busy = False

    def _append(self, when: float, tps: float, running: int, queued: int, hit_rate: float, generated: int) -> None:
        t = round(when - self.t0, 3)
        if self._points and t < self._points[-1].t:  # a run ended early (close_idle forced) and one began
            t = self._points[-1].t
        self._points.append(TimelinePoint(t, round(tps, 3), int(running), int(queued), round(float(hit_rate), 4),
                                          int(generated)))
        self.version += 1

    def points(self) -> list[dict]:
        """Every point kept, oldest first, as dicts (the ThroughputChart's `points` plus `generated`)."""
        with self._lock:
            return [asdict(p) for p in self._points]

    def last(self) -> Optional[dict]:
        """The newest point (None before the first step), without copying the rest."""
        with self._lock:
            return asdict(self._points[-1]) if self._points else None

    def __len__(self) -> int:
        return len(self._points)
