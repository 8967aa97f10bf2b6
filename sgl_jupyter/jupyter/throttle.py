"""Getting engine events to widgets without slowing the engine down.

Engine callbacks run on the scheduler thread, between model steps, so the widgets' callbacks only file the
event (a deque append). A `Pump` thread drains what was filed and pushes widget updates, each widget at
most `rate` times a second (`RateLimit`), so a token stream costs the front end ~20 messages a second
however fast the model decodes. `EngineTap` holds one engine subscription for all of them, and none
while no widget listens (a detached engine emits no events at all).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

logger = logging.getLogger(__name__)


class RateLimit:
    """Allows an action at most once every `interval` seconds."""

    def __init__(self, interval: float):
        if interval < 0:
            raise ValueError(f"interval must be >= 0 seconds, got {interval}")
        self.interval = interval
        self.last = float("-inf")

    def ready(self, now: Optional[float] = None) -> bool:
        now = time.monotonic() if now is None else now
        return now - self.last >= self.interval

    def mark(self, now: Optional[float] = None) -> None:
        self.last = time.monotonic() if now is None else now


class Pump:
    """A daemon thread that calls every registered `flush()` each `tick` seconds.

    It runs only while something is registered. A failing flush is logged and does not stop the others.
    """

    def __init__(self, tick: float = 0.05, name: str = "sgl-jupyter-widgets"):
        self.tick = tick
        self.name = name
        self._flushers: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.cpu_s = 0.0  # CPU time the flushes took (what the widgets cost this process)

    def add(self, flush: Callable[[], None]) -> None:
        with self._lock:
            if flush not in self._flushers:
                self._flushers = self._flushers + [flush]
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def remove(self, flush: Callable[[], None]) -> None:
        with self._lock:
            self._flushers = [f for f in self._flushers if f != flush]
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._lock:
                flushers = self._flushers
                if not flushers:
                    self._thread = None
                    return
            start = time.thread_time()
            for flush in flushers:
                try:
                    flush()
                except Exception:  # noqa: BLE001 - one broken widget must not stop the others
                    logger.exception("widget update failed")
            self.cpu_s += time.thread_time() - start
            self._wake.wait(self.tick)
            self._wake.clear()


class EngineTap:
    """One `engine.subscribe` shared by every listener; subscribed only while someone listens."""

    def __init__(self, engine: Any):
        self.engine = engine
        self._listeners: list[Callable[[Any], None]] = []
        self._unsubscribe: Optional[Callable[[], None]] = None
        self._lock = threading.Lock()
        self.dispatch_s = 0.0  # time the listeners took on the scheduler thread
        self.events = 0

    def add(self, listener: Callable[[Any], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                return
            self._listeners = self._listeners + [listener]
            if self._unsubscribe is None:
                self._unsubscribe = self.engine.subscribe(self._dispatch)

    def remove(self, listener: Callable[[Any], None]) -> None:
        with self._lock:
            self._listeners = [x for x in self._listeners if x != listener]
            if not self._listeners and self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None

    def close(self) -> None:
        with self._lock:
            self._listeners = []
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None

    @property
    def subscribed(self) -> bool:
        return self._unsubscribe is not None

    def _dispatch(self, event: Any) -> None:  # scheduler thread: keep it to appends
        start = time.perf_counter()
        for listener in self._listeners:
            listener(event)
        self.dispatch_s += time.perf_counter() - start
        self.events += 1
