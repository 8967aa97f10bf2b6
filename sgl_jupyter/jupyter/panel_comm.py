"""Kernel side of the JupyterLab engine panel: comm target ``sgl_jupyter.panel``.

The kernel opens the comm itself at ``%load_ext`` (`open_from_kernel`: a kernel-to-front-end comm_open travels
on iopub, so it arrives while Run All still executes cells; a front-end comm_open waits on the shell channel
until the last cell has run). The front end may also open one (a page reloaded later). Either way the kernel
sends the current stats and then pushes
``{"type": "stats", "data": {...}}`` at most every 0.5 s while the numbers change. The front end
(labextension/src/panel/connection.ts) may send ``{"type": "flush"}`` (answered with
``{"type": "flushed", "data": {"ok": bool}}`` and fresh stats), ``{"type": "refresh"}`` or ``{"type": "tree"}``
(answered with ``{"type": "tree", "data": <cache_snapshot>}``, or ``"data": None`` and an ``"error"``).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Optional

from .throttle import RateLimit

logger = logging.getLogger(__name__)

TARGET = "sgl_jupyter.panel"


def _empty_stats() -> dict:
    return {"loaded": False, "model": "", "device": "", "dtype": "", "kv_used": 0, "kv_total": 0, "running": 0,
            "queued": 0, "cache_hit_rate": 0.0, "tokens_per_s": 0.0, "backend": None}


def panel_stats(session: Any) -> dict:
    """The panel's numbers, from the backend's `get_server_info()`."""
    stats = _empty_stats()
    if session.kind is None:
        return stats
    try:
        info = session.poll_server_info() or {}
    except Exception as e:  # noqa: BLE001 - a remote server may be down; say so instead of failing
        logger.debug("panel: get_server_info failed: %s", e)
        info = {}
    kv = info.get("kv") or {}
    stats.update({
        "loaded": True, "backend": session.kind,
        "model": str(info.get("served_model_name") or info.get("model_path") or ""),
        "device": str(info.get("device", "")), "dtype": str(info.get("dtype", "")),
        "kv_used": int(kv.get("used", 0) or 0), "kv_total": int(kv.get("total", info.get("max_total_num_tokens", 0)) or 0),
        "running": int(info.get("num_running_reqs", 0) or 0), "queued": int(info.get("num_queue_reqs", 0) or 0),
        "cache_hit_rate": float(info.get("cache_hit_rate", 0.0) or 0.0),
        "tokens_per_s": round(float(info.get("token_throughput", 0.0) or 0.0), 3),
    })
    engine = session.engine
    if engine is not None:  # the same tokens/s as %sgl_stats' chart: the timeline's newest point (0 once idle)
        from .feeds import engine_totals

        engine.timeline.close_idle(*engine_totals(engine))
        last = engine.timeline.last()
        stats["tokens_per_s"] = last["tokens_per_s"] if last else 0.0
    return stats


class PanelComm:
    """Registers the comm target and serves every panel the front end opens."""

    def __init__(self, session: Any, interval: float = 0.5, remote_interval: float = 2.0):
        self.session = session
        self.interval, self.remote_interval = interval, remote_interval
        self.comms: list[Any] = []
        self._last: dict[str, Optional[dict]] = {}
        self._limit = RateLimit(interval)
        self._lock = threading.Lock()
        self._manager: Any = None

    # ------------------------------------------------------------------ registration
    def register(self) -> None:
        import comm

        self._manager = comm.get_comm_manager()
        self._manager.register_target(TARGET, self._on_open)

    def unregister(self) -> None:
        self.session.pump.remove(self.flush)
        for c in list(self.comms):
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        self.comms.clear()
        if self._manager is not None:
            try:
                self._manager.unregister_target(TARGET, self._on_open)
            except Exception:  # noqa: BLE001 - already gone with the kernel
                pass
            self._manager = None

    def open_from_kernel(self) -> bool:
        """Open a panel comm to the front end now, carrying the current stats; False if this kernel has no
        front end to open it to. A front end without the target (nbclient, other clients) ignores or closes it."""
        import comm

        stats = panel_stats(self.session)
        try:
            c = comm.create_comm(target_name=TARGET, data={"type": "stats", "data": stats})
        except Exception:  # noqa: BLE001 - no kernel (plain IPython): the panel is a JupyterLab feature
            logger.debug("panel: cannot open a comm from the kernel", exc_info=True)
            return False
        self._last[c.comm_id] = stats
        self._adopt(c)
        return True

    # ------------------------------------------------------------------ comms
    def _on_open(self, comm: Any, open_msg: Any) -> None:
        self._adopt(comm)
        self._send_stats(comm, force=True)

    def _adopt(self, comm: Any) -> None:
        with self._lock:
            self.comms.append(comm)
        comm.on_msg(lambda msg, c=comm: self._on_msg(c, msg))
        comm.on_close(lambda msg, c=comm: self._on_close(c))
        self.session.pump.add(self.flush)

    def _on_close(self, comm: Any) -> None:
        with self._lock:
            self.comms = [c for c in self.comms if c is not comm]
            self._last.pop(comm.comm_id, None)
            empty = not self.comms
        if empty:
            self.session.pump.remove(self.flush)

    def _on_msg(self, comm: Any, msg: dict) -> None:
        data = (msg.get("content") or {}).get("data") or {}
        kind = data.get("type")
        if kind == "refresh":
            self._send_stats(comm, force=True)
        elif kind == "flush":
            ok = self.session.flush_cache() if self.session.kind is not None else False
            comm.send({"type": "flushed", "data": {"ok": ok}})
            self._send_stats(comm, force=True)
        elif kind == "tree":
            if self.session.engine is None:
                comm.send({"type": "tree", "data": None, "error": "no in-process engine: run %sgl_load"})
            else:
                from .feeds import readable_snapshot

                comm.send({"type": "tree", "data": readable_snapshot(self.session.engine.cache_snapshot())})
        else:
            comm.send({"type": "error", "data": {"message": f"unknown panel message type {kind!r}; expected "
                                                            "refresh, flush or tree"}})

    def _send_stats(self, comm: Any, force: bool = False) -> None:
        stats = panel_stats(self.session)
        if force or self._last.get(comm.comm_id) != stats:
            self._last[comm.comm_id] = stats
            comm.send({"type": "stats", "data": stats})

    def flush(self) -> None:
        """Pump thread: push changed stats to every open panel, at most every `interval` seconds."""
        interval = self.remote_interval if self.session.kind == "endpoint" else self.interval
        self._limit.interval = interval
        if not self._limit.ready():
            return
        self._limit.mark()
        with self._lock:
            comms = list(self.comms)
        if not comms:
            return
        stats = panel_stats(self.session)
        for c in comms:
            if self._last.get(c.comm_id) != stats:
                self._last[c.comm_id] = stats
                try:
                    c.send({"type": "stats", "data": stats})
                except Exception:  # noqa: BLE001 - a closed comm; its close message will follow
                    logger.debug("panel comm send failed", exc_info=True)
