"""Feeds: turn engine and program events into widget state, throttled.

Each feed has three entry points: `on_*_event` (called on the engine's scheduler thread or a program's
worker thread: only appends to a deque), `flush()` (called by the `Pump` thread: folds what arrived into
state and pushes it to the widget when due), and `close()`/`finish()` (the cell's thread: last push).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .throttle import EngineTap, Pump, RateLimit
from .widgets import RadixTreeView, ThroughputChart, TokenStream

_PENDING_TTL_S = 30.0  # engine tokens of requests no gen has claimed (yet) are kept this long
_LATENCY_KEYS = ("id", "prompt_tokens", "completion_tokens", "cached_tokens", "e2e_latency", "ttft")


def latency_fields(meta: Any) -> Optional[dict]:
    """The small part of a meta_info worth keeping for latency statistics (not its logprob lists)."""
    if not isinstance(meta, dict):
        return None
    return {k: meta[k] for k in _LATENCY_KEYS if k in meta}


def _event_classes() -> dict[str, type]:
    from sgl_jupyter.engine import events

    return {name: getattr(events, name) for name in ("TokenEvent", "FinishEvent", "StepEvent", "CacheEvent")
            if hasattr(events, name)}


# ---------------------------------------------------------------------------------------------- TokenStream
@dataclass
class _Gen:
    """One `gen` (or `select`) of a program, as the TokenStream shows it."""

    label: str
    started: float
    rid: Optional[str] = None
    text: str = ""
    tokens: list[dict] = field(default_factory=list)
    n_tokens: int = 0
    last: Optional[float] = None
    finish_reason: Optional[str] = None
    done: bool = False
    tokens_per_s: float = 0.0

    def as_state(self, max_tokens: int) -> dict:
        return {"text": self.text, "tokens": list(self.tokens[-max_tokens:]), "n_tokens": self.n_tokens,
                "tokens_per_s": round(self.tokens_per_s, 3), "finish_reason": self.finish_reason,
                "done": self.done}


def _reason(meta: Any) -> Optional[str]:
    reason = (meta or {}).get("finish_reason") if isinstance(meta, dict) else None
    if isinstance(reason, dict):
        return reason.get("type")
    return reason


class TokenStreamFeed:
    """Fills a `TokenStream` from program events (which gen, its text) and, with an in-process engine,
    the engine's token events (per-token text increments and logprobs, matched to gens by request id)."""

    def __init__(self, widget: TokenStream, pump: Pump, tap: Optional[EngineTap] = None, *, rate: float = 20.0,
                 max_tokens: int = 2000):
        self.widget = widget
        self.pump = pump
        self.tap = tap
        self.max_tokens = max_tokens
        self.limit = RateLimit(1.0 / rate if rate > 0 else 0.0)
        self._inbox: deque = deque()
        self._lock = threading.Lock()
        self._gens: dict[str, _Gen] = {}
        self._order: list[str] = []
        self._current: dict[tuple, _Gen] = {}
        self._by_rid: dict[str, _Gen] = {}
        self._pending: dict[str, tuple[float, list]] = {}
        self._dirty = False
        self._closed = False
        self.status = "running"
        self.error = ""
        if tap is not None:
            self._token_cls = _event_classes()["TokenEvent"]
            tap.add(self.on_engine_event)
        pump.add(self.flush)

    # ------------------------------------------------------------------ producers (other threads)
    def on_program_event(self, event: dict) -> None:
        self._inbox.append((time.time(), event))

    def on_engine_event(self, event: Any) -> None:
        if event.__class__ is self._token_cls:
            self._inbox.append(event)

    # ------------------------------------------------------------------ folding events into state
    def _label(self, name: Any, default: str) -> str:
        base = str(name) if name is not None else default
        label, i = base, 2
        while label in self._gens:
            label, i = f"{base}#{i}", i + 1
        return label

    def _new_gen(self, key: tuple, name: Any, default: str, now: float) -> _Gen:
        gen = _Gen(self._label(name, default), started=now)
        self._gens[gen.label] = gen
        self._order.append(gen.label)
        self._current[key] = gen
        return gen

    def _claim(self, gen: _Gen, rid: str) -> None:
        gen.rid = rid
        self._by_rid[rid] = gen
        _, events = self._pending.pop(rid, (0.0, []))
        for ev in events:
            self._add_tokens(gen, ev)

    def _add_tokens(self, gen: _Gen, ev: Any) -> None:
        if ev.token_ids or ev.delta:
            lp = ev.logprobs[0] if ev.logprobs else None
            gen.tokens.append({"t": ev.delta, "lp": lp})
        gen.n_tokens = max(gen.n_tokens, int(ev.completion_tokens))
        gen.last = ev.time
        if gen.n_tokens and not gen.done:
            gen.tokens_per_s = gen.n_tokens / max(ev.time - gen.started, 1e-6)

    def _program(self, now: float, ev: dict) -> None:
        kind, key = ev.get("event"), (ev.get("sid"), ev.get("name"))
        if kind == "gen_start":
            self._new_gen(key, ev.get("name"), "gen", now)
            return
        if kind == "select":
            gen = self._new_gen(key, ev.get("name"), "select", now)
            gen.text, gen.done, gen.finish_reason = str(ev.get("text", "")), True, "select"
            return
        if kind == "error":
            err = ev.get("error")
            self.error = f"{type(err).__name__}: {err}" if err is not None else "error"
            return
        gen = self._current.get(key)
        if gen is None:
            gen = self._new_gen(key, ev.get("name"), "gen", now)
        meta = ev.get("meta_info")
        metas = meta if isinstance(meta, list) else [meta]
        text = ev.get("text", "")
        gen.text = text if isinstance(text, str) else "\n".join(map(str, text))
        first = metas[0] if metas and isinstance(metas[0], dict) else {}
        rid = first.get("id")
        if rid and gen.rid is None:
            self._claim(gen, rid)
        if self.tap is None and kind == "gen_chunk" and ev.get("delta"):
            gen.tokens.append({"t": ev["delta"], "lp": None})
            gen.last = now
        completion = sum(int((m or {}).get("completion_tokens") or 0) for m in metas if isinstance(m, dict))
        gen.n_tokens = max(gen.n_tokens, completion, 0 if self.tap is not None else len(gen.tokens))
        if kind == "gen_end":
            gen.done = True
            gen.finish_reason = _reason(first)
            latency = first.get("e2e_latency")
            if latency:
                gen.tokens_per_s = gen.n_tokens / latency
        elif gen.n_tokens and gen.last is not None:
            gen.tokens_per_s = gen.n_tokens / max(gen.last - gen.started, 1e-6)

    def _engine(self, ev: Any) -> None:
        gen = self._by_rid.get(ev.rid)
        if gen is not None:
            self._add_tokens(gen, ev)
        else:  # the gen learns its request id from its first chunk, which may come after the first tokens
            self._pending.setdefault(ev.rid, (time.monotonic(), []))[1].append(ev)

    def _drain(self) -> bool:
        count = len(self._inbox)  # what has arrived so far: a fast producer cannot keep us here
        for _ in range(count):
            ev = self._inbox.popleft()
            if isinstance(ev, tuple):
                self._program(*ev)
            else:
                self._engine(ev)
        if self._pending:
            cutoff = time.monotonic() - _PENDING_TTL_S
            for rid in [r for r, (t0, _) in self._pending.items() if t0 < cutoff]:
                del self._pending[rid]
        return count > 0

    def state(self) -> dict:
        return {"streams": {label: g.as_state(self.max_tokens) for label, g in self._gens.items()},
                "order": list(self._order), "status": self.status, "error": self.error}

    # ------------------------------------------------------------------ pushing
    def flush(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._dirty |= self._drain()
            if self._dirty and self.limit.ready():
                self._push()

    def _push(self) -> None:
        state = self.state()
        self.widget.push(streams=state["streams"], order=state["order"], status=state["status"],
                         error=state["error"])
        self.limit.mark()
        self._dirty = False

    def finish(self, status: str, error: str = "") -> None:
        """Final state (done / error / interrupted): one last push, within the rate limit, then detach."""
        self.pump.remove(self.flush)
        if self.tap is not None:
            self.tap.remove(self.on_engine_event)
        with self._lock:
            self._drain()
            self.status = status
            if error:
                self.error = error
            for gen in self._gens.values():
                if not gen.done and status != "done":
                    gen.finish_reason = gen.finish_reason or ("abort" if status == "interrupted" else None)
            wait = self.limit.interval - (time.monotonic() - self.limit.last)
            if wait > 0:
                time.sleep(wait)
            self._push()
            self._closed = True


# ---------------------------------------------------------------------------------------------- RadixTreeView
def _clean_preview(text: str) -> str:
    """A node's text preview without the U+FFFD halves of characters its token boundaries cut (a node, or its
    preview's first tokens, can end inside a multi-byte character: "28岁" shown as "28\ufffd")."""
    more = text.endswith("\u2026")
    body = text[:-1] if more else text
    return body.strip("\ufffd") + ("\u2026" if more else "")


def readable_snapshot(snapshot: dict) -> dict:
    """`engine.cache_snapshot()` with every node's text preview cleaned (`_clean_preview`)."""
    nodes = [{**n, "text": _clean_preview(n.get("text", ""))} if "\ufffd" in n.get("text", "") else n
             for n in snapshot.get("nodes", [])]
    return {**snapshot, "nodes": nodes}


class RadixTreeFeed:
    """Keeps a `RadixTreeView` equal to `engine.cache_snapshot()`, re-read at most every `interval` s after
    the tree may have changed (a prefill, a finished request, a cache event)."""

    def __init__(self, widget: RadixTreeView, engine: Any, pump: Pump, tap: EngineTap, *, interval: float = 0.5):
        self.widget, self.engine, self.pump, self.tap = widget, engine, pump, tap
        self.limit = RateLimit(interval)
        classes = _event_classes()
        self._step_cls = classes["StepEvent"]
        self._changes = {classes[n] for n in ("FinishEvent", "CacheEvent") if n in classes}
        self._dirty = True
        self._hits: dict[int, int] = {}
        self._lock = threading.Lock()
        self.refresh()
        tap.add(self.on_engine_event)
        pump.add(self.flush)

    def on_engine_event(self, event: Any) -> None:
        cls = event.__class__
        if cls in self._changes or (cls is self._step_cls and event.mode == "extend"):
            self._dirty = True

    def mark_changed(self) -> None:
        """The tree changed without an engine event (a cache flush): re-read it at the next tick."""
        self._dirty = True

    def flush(self) -> None:
        if self._dirty and self.limit.ready():
            self.refresh()

    def refresh(self) -> dict:
        """Read the tree now and push it (also what tests and `%sgl_cache` call)."""
        with self._lock:
            self._dirty = False
            self.limit.mark()
            snap = readable_snapshot(self.engine.cache_snapshot(max(self.widget.max_nodes, 1) + 1))  # + the root
            hits = {n["id"]: n.get("hits", 0) for n in snap.get("nodes", [])}
            hot = [i for i, h in hits.items() if i > 0 and h > self._hits.get(i, 0)]
            self._hits = hits
            skipped = int(snap.get("skipped_nodes", 0) or 0)
            if skipped:
                snap = {**snap, "nodes": snap["nodes"] + [
                    {"id": -2, "parent": 0, "tokens": 0, "text": f"\u2026 {skipped} more nodes", "ref": 0,
                     "last_access": 0.0, "hits": 0}]}
            changes: dict[str, Any] = {"tree": snap}
            if hot:
                changes["highlight"] = hot
            self.widget.push(**changes)
            return snap

    def close(self) -> None:
        self.pump.remove(self.flush)
        self.tap.remove(self.on_engine_event)


# ---------------------------------------------------------------------------------------------- ThroughputChart
def engine_totals(engine: Any) -> tuple[int, float]:
    """(generated tokens, cache hit rate) as `get_server_info()` reports them, without building all of it."""
    return int(engine.scheduler.generation_tokens_total), float(engine.cache.hit_rate)


def timeline_points(engine: Any, force_idle: bool = False) -> list[dict]:
    """The engine's step history since load (engine/timeline.py), its busy run ended if the engine went idle
    (`force_idle`: at once if no request is waiting or running), so the last point carries the counters now."""
    if force_idle:  # a request that just returned its output may still be leaving the batch: wait for that
        deadline = time.monotonic() + 0.2
        while engine.scheduler.has_work and time.monotonic() < deadline:
            time.sleep(0.005)
    generated, hit_rate = engine_totals(engine)
    timeline = engine.timeline
    if force_idle and not engine.scheduler.has_work:
        timeline.close_idle(generated, hit_rate, now=float("inf"))
    else:
        timeline.close_idle(generated, hit_rate)
    return timeline.points()


class ThroughputFeed:
    """Keeps a `ThroughputChart` equal to the engine's timeline (every step since load, one point per
    `interval` s while it runs), re-read at most every `interval` s while it grows; it also files the
    requests that finish while attached (for %sgl_stats' latency rows). Over HTTP it polls `get_server_info`."""

    MAX_POINTS = 1200

    def __init__(self, widget: ThroughputChart, pump: Pump, *, engine: Any = None, tap: Optional[EngineTap] = None,
                 server_info: Optional[Callable[[], dict]] = None, interval: float = 0.25,
                 poll_interval: float = 1.0):
        if engine is None and server_info is None:
            raise ValueError("a ThroughputFeed needs an engine or a server_info function to poll")
        self.widget, self.pump, self.engine, self.tap, self.server_info = widget, pump, engine, tap, server_info
        self.interval = interval if engine is not None else poll_interval
        self.limit = RateLimit(self.interval)
        self.t0 = engine.timeline.t0 if engine is not None else time.time()
        self.points: list[dict] = list(widget.points)
        self.finished: deque = deque(maxlen=10_000)  # latency fields of requests finished while attached
        self._version = -1
        if engine is not None:
            self._sync(force_idle=True)  # history since load, shown at once
        if tap is not None:
            self._finish_cls = _event_classes()["FinishEvent"]
            tap.add(self.on_engine_event)
        pump.add(self.flush)

    def on_engine_event(self, event: Any) -> None:
        if event.__class__ is self._finish_cls:
            self.finished.append(latency_fields(event.meta_info))  # once a request, not a token

    def _sync(self, force_idle: bool = False) -> None:
        points = timeline_points(self.engine, force_idle)
        version = self.engine.timeline.version
        if version == self._version:
            return
        self._version = version
        self.points = points[-self.MAX_POINTS:]
        self.widget.push(points=list(self.points))
        # a long history is a big message: push it less often the longer it gets
        self.limit.interval = self.interval * (1 + len(self.points) // 400)
        self.limit.mark()

    def flush(self) -> None:
        if not self.limit.ready():
            return
        if self.engine is not None:
            self._sync()
        else:
            self._poll()

    def _poll(self) -> None:
        try:
            info = self.server_info() or {}
        except Exception:  # noqa: BLE001 - a flaky server must not kill the chart; try again next tick
            self.limit.mark()
            return
        self.points.append({"t": round(time.time() - self.t0, 4),
                            "tokens_per_s": float(info.get("token_throughput", 0.0) or 0.0),
                            "running": int(info.get("num_running_reqs", 0) or 0),
                            "queued": int(info.get("num_queue_reqs", 0) or 0),
                            "hit_rate": float(info.get("cache_hit_rate", 0.0) or 0.0),
                            "generated": int(info.get("generation_tokens_total", 0) or 0)})
        del self.points[:-self.MAX_POINTS]
        self.widget.push(points=list(self.points))
        self.limit.mark()

    def close(self) -> None:
        self.pump.remove(self.flush)
        if self.tap is not None:
            self.tap.remove(self.on_engine_event)
