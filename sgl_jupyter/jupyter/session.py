"""The kernel's current backend: an in-process `Engine` (``%sgl_load``), a remote SGLang-compatible
endpoint (``%sgl_connect``), or nothing; plus the HTTP server serving the engine (``%sgl_serve``) and the
widget machinery (one `Pump` thread, one `EngineTap`) shared by every live widget of the kernel."""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable, Optional

from IPython.core.error import UsageError

from .config import SGL
from .throttle import EngineTap, Pump

logger = logging.getLogger(__name__)

_NO_BACKEND = ("no model is loaded: run %sgl_load (the embedded model, or %sgl_load MODEL_PATH) "
               "or %sgl_connect http://host:port first")


class KernelSession:
    """What this kernel runs programs on. One per IPython shell (see `sgl_jupyter.jupyter.get_session`)."""

    def __init__(self, config: Optional[SGL] = None):
        self.config = config or SGL()
        self.engine: Any = None
        self.endpoint: Any = None
        self.server: Any = None
        self.tap: Optional[EngineTap] = None
        self.pump = Pump(tick=0.05)
        self.history: deque[dict] = deque(maxlen=10_000)  # latency fields of the gens %%sgl cells ran
        self._closers: list[Callable[[], None]] = []  # live widget feeds to stop when the backend changes
        self.trees: list[Any] = []  # RadixTreeViews made by %sgl_cache (most recent last)
        self.charts: list[Any] = []  # ThroughputCharts made by %sgl_stats
        self.last_stream: Any = None  # the TokenStream of the latest %%sgl cell
        self._displays: list[list] = []  # [widget, display handle, pushes when last shown] of live widgets

    # ------------------------------------------------------------------ what is loaded
    @property
    def kind(self) -> Optional[str]:
        return "engine" if self.engine is not None else "endpoint" if self.endpoint is not None else None

    @property
    def backend(self) -> Any:
        """The DSL backend programs run on (the same object `set_default_backend` got)."""
        from sgl_jupyter.lang.api import as_backend

        if self.engine is not None:
            return as_backend(self.engine)
        if self.endpoint is not None:
            return self.endpoint
        raise UsageError(_NO_BACKEND)

    def require_engine(self, what: str) -> Any:
        if self.engine is None:
            hint = (" (connected to a remote server: its engine is not in this kernel)"
                    if self.endpoint is not None else "")
            raise UsageError(f"{what} needs the in-process engine{hint}: run %sgl_load first")
        return self.engine

    # ------------------------------------------------------------------ switching backends
    def set_engine(self, engine: Any) -> None:
        """Adopt a loaded engine as the kernel's backend (unloading whatever was there)."""
        self.unload()
        self.engine = engine
        self.tap = EngineTap(engine)
        self._make_default()

    def set_endpoint(self, endpoint: Any) -> None:
        self.unload()
        self.endpoint = endpoint
        self._make_default()

    def _make_default(self) -> None:
        from sgl_jupyter.lang.api import set_default_backend

        set_default_backend(self.engine if self.engine is not None else self.endpoint)

    def unload(self) -> bool:
        """Stop the server and live widgets, shut the engine down; True if something was loaded."""
        from sgl_jupyter.lang.api import get_default_backend, set_default_backend

        had = self.kind is not None
        self.stop_server()
        for close in list(self._closers):
            try:
                close()
            except Exception:  # noqa: BLE001
                logger.exception("closing a widget feed failed")
        self._closers.clear()
        self.trees.clear()
        self.charts.clear()
        self._displays.clear()
        old_default = get_default_backend()
        if old_default is not None and (old_default is self.endpoint
                                        or getattr(old_default, "engine", None) is self.engine):
            set_default_backend(None)
        if self.tap is not None:
            self.tap.close()
            self.tap = None
        if self.engine is not None:
            engine, self.engine = self.engine, None
            engine.shutdown()
        if self.endpoint is not None:
            endpoint, self.endpoint = self.endpoint, None
            try:
                endpoint.shutdown()
            except Exception:  # noqa: BLE001
                pass
        return had

    def on_unload(self, close: Callable[[], None]) -> None:
        """Run `close` when the backend goes away (live widgets detach from the old engine)."""
        self._closers.append(close)

    def flush_cache(self) -> bool:
        """Drop the backend's prefix cache; live tree views re-read it (a flush emits no engine event)."""
        if self.engine is not None:
            ok = bool(self.engine.flush_cache())
        elif self.endpoint is not None:
            ok = self.endpoint.flush_cache() is not False
        else:
            raise UsageError(_NO_BACKEND)
        for view in list(self.trees):
            if view.feed is not None and view.comm is not None:
                view.feed.mark_changed()
        return ok

    # ------------------------------------------------------------------ displays
    def show(self, widget: Any, shell: Any = None) -> None:
        """Display a live widget. In a kernel its output is re-rendered after each cell that changed it, so
        the static fallback saved with the notebook (nbconvert, no widget state) stays current."""
        from IPython.display import display

        if getattr(shell, "kernel", None) is None:
            display(widget)
            return
        handle = display(widget, display_id=True)
        self._displays.append([widget, handle, len(widget.push_times)])

    def refresh_displays(self, *_: Any) -> None:
        """IPython `post_execute` hook: update the saved outputs of live widgets that changed."""
        alive = []
        for entry in self._displays:
            widget, handle, shown = entry
            if widget.comm is None:  # closed
                continue
            alive.append(entry)
            pushes = len(widget.push_times)
            if pushes != shown:
                entry[2] = pushes
                try:
                    handle.update(widget)
                except Exception:  # noqa: BLE001 - a display that cannot be refreshed keeps its last form
                    logger.debug("display refresh failed", exc_info=True)
        self._displays = alive

    # ------------------------------------------------------------------ serving
    def serve(self, host: str, port: int, api_key: Optional[str]) -> Any:
        engine = self.require_engine("%sgl_serve")
        if self.server is not None:
            raise UsageError(f"already serving at {self.server.url}; stop it first with %sgl_serve --stop")
        try:
            from sgl_jupyter.server import serve_in_thread
        except ImportError as e:
            raise UsageError(f"the HTTP server is not available in this installation ({e})") from None
        try:
            self.server = serve_in_thread(engine, host=host, port=port, api_key=api_key)
        except OSError as e:  # port in use, address not available
            raise UsageError(f"%sgl_serve: cannot serve at {host}:{port}: {e}") from None
        return self.server

    def stop_server(self) -> bool:
        if self.server is None:
            return False
        server, self.server = self.server, None
        server.stop()
        return True

    # ------------------------------------------------------------------ numbers for the panel and %sgl_stats
    def server_info(self) -> dict:
        """The backend's `get_server_info()` (engine: read directly; endpoint: over HTTP)."""
        if self.engine is not None:
            for _ in range(3):
                try:
                    return self.engine.get_server_info()
                except RuntimeError:  # a counter changed under us (the scheduler thread runs): read again
                    time.sleep(0.001)
            return self.engine.get_server_info()
        if self.endpoint is not None:
            return self.endpoint.get_server_info() or {}
        raise UsageError(_NO_BACKEND)

    def poll_server_info(self, timeout: float = 2.0) -> dict:
        """`server_info()` for background threads: a remote server gets `timeout` seconds to answer, so a
        hung server cannot freeze the widgets."""
        endpoint = self.endpoint
        if self.engine is not None or endpoint is None:
            return self.server_info()
        import httpx

        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        res = httpx.get(f"{endpoint.base_url}/get_server_info", headers=headers, timeout=timeout)
        res.raise_for_status()
        return res.json()

    def close(self) -> None:
        self.unload()
