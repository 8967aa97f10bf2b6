"""The live widgets: TokenStream, RadixTreeView, ThroughputChart (anywidget classes).

Their synced traits are the contract with the front end (labextension/src/widgets/*.ts, built by every
install of the package into ``static/<name>.js``; see the widget contract in docs/architecture.md). Every
widget also has a static rendering (`_repr_mimebundle_`: text/plain, text/html, and a PNG for the chart) so
plain IPython, nbconvert and notebooks saved without widget state show the content.

Widgets only hold state; the feeds in `feeds.py` fill them from engine and program events, calling
`push()` at most ~20 times a second.
"""
from __future__ import annotations

import base64
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import anywidget
import traitlets as t

from . import fallback

_HERE = Path(__file__).parent
STATIC_DIR = _HERE / "static"


class FrontendNotBuiltError(FileNotFoundError):
    """The widget ES modules are missing: this copy of the package was not installed with its front-end build."""


def esm_path(name: str) -> Path:
    """The built front-end module of widget `name` (labextension/src/widgets/<name>.ts)."""
    path = STATIC_DIR / f"{name}.js"
    if not path.is_file():
        raise FrontendNotBuiltError(
            f"the {name} widget's front end ({path}) is missing: sgl_jupyter was not installed with its front-end "
            "build (e.g. it is imported from a source checkout through PYTHONPATH). Install it with Node.js >= 20 "
            "on PATH: `pip install -e .` in the checkout, or `bash scripts/setup.sh`.")
    return path


class LiveWidget(anywidget.AnyWidget):
    """Base: `push()` sends several trait changes as one comm message and counts the messages sent."""

    feed: Any = None  # what fills the widget (feeds.py), if it is live

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._push_lock = threading.RLock()
        self._closers: list = []
        self.push_times: deque[float] = deque(maxlen=10_000)  # monotonic times of pushes (rate tests, stats)

    def add_closer(self, fn: Any) -> None:
        """Call `fn` when the widget is closed (its feed stops listening to the engine)."""
        self._closers.append(fn)

    def close(self) -> None:
        for fn in self._closers:
            fn()
        self._closers.clear()
        super().close()

    def push(self, **changes: Any) -> None:
        with self._push_lock, self.hold_sync():
            for name, value in changes.items():
                setattr(self, name, value)
        self.push_times.append(time.monotonic())

    def max_rate(self, window: float = 1.0) -> int:
        """The most pushes within any `window` seconds (what the front end had to absorb)."""
        times = list(self.push_times)
        best, lo = 0, 0
        for hi, now in enumerate(times):
            while now - times[lo] > window:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def _bundle(self, data: dict, include: Any = None, exclude: Any = None) -> tuple[dict, dict]:
        widget = super()._repr_mimebundle_() if self.comm is not None else None
        meta: dict = {}
        if widget is not None:
            wdata, meta = widget
            data = {**data, **{k: v for k, v in wdata.items() if k != "text/plain"}}
        if include:
            data = {k: v for k, v in data.items() if k in include}
        if exclude:
            data = {k: v for k, v in data.items() if k not in exclude}
        return data, meta


class TokenStream(LiveWidget):
    """Live text of every `gen` of a program: per-token spans (logprob colouring), tokens/s, finish reason."""

    _esm = esm_path("token_stream")
    streams = t.Dict(default_value={}).tag(sync=True)
    order = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    status = t.Unicode("running").tag(sync=True)
    error = t.Unicode("").tag(sync=True)
    show_logprobs = t.Bool(False).tag(sync=True)

    def text_of(self, name: str) -> str:
        return self.streams[name]["text"]

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any):
        state = {"streams": self.streams, "order": self.order, "status": self.status, "error": self.error}
        return self._bundle({"text/plain": fallback.token_stream_text(state),
                             "text/html": fallback.token_stream_html(state)}, include, exclude)


class RadixTreeView(LiveWidget):
    """The engine's radix (prefix) cache tree: token counts, text previews, ref counts, recent hits."""

    _esm = esm_path("radix_tree")
    tree = t.Dict(default_value={}).tag(sync=True)
    highlight = t.List(t.Int(), default_value=[]).tag(sync=True)
    max_nodes = t.Int(200).tag(sync=True)

    def refresh(self) -> dict:
        """Read the engine's tree now (a live view also does this by itself when the tree changes)."""
        if self.feed is None:
            raise RuntimeError("this RadixTreeView is not attached to an engine (make one with %sgl_cache)")
        return self.feed.refresh()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any):
        return self._bundle({"text/plain": fallback.radix_tree_text(self.tree, self.highlight),
                             "text/html": fallback.radix_tree_html(self.tree, self.highlight)}, include, exclude)


class ThroughputChart(LiveWidget):
    """Tokens/s, running and queued requests and the cache hit rate over time."""

    _esm = esm_path("throughput")
    points = t.List(t.Dict(), default_value=[]).tag(sync=True)
    window_s = t.Float(0.0).tag(sync=True)  # seconds shown; 0: every point (history since load)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any):
        png = fallback.throughput_png(self.points, self.window_s)
        data = {"text/plain": fallback.throughput_text(self.points),
                "text/html": fallback.throughput_html(self.points, png)}
        if png is not None:
            data["image/png"] = base64.b64encode(png).decode("ascii")
        return self._bundle(data, include, exclude)
