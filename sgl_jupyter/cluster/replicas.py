"""One engine replica as a Ray Serve deployment: the single server's own app (``server.app.create_app``)
over one ``Engine``, called in-process through ASGI, so every route, validation and error of the single
server is the replica's too. The router streams a request in and the response back out:
the first item is the head (status, headers), then body chunks as the app sends them.

Cancelling the call (the client went away) tells the app ``http.disconnect``, which aborts the
request's engine work (the single server's own disconnect path) so its KV slots come back.
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

logger = logging.getLogger(__name__)

DISCONNECT_GRACE_S = 2.0
HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


@dataclass
class ReplicaSpec:
    """How one replica starts: engine arguments, its index, and what Ray reserves for it."""

    engine_kwargs: dict
    index: int
    served_model_name: Optional[str] = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    log_level: str = "warning"
    env: dict = field(default_factory=dict)


def head_of(message: dict) -> dict:
    """The part of ``http.response.start`` the router replays (hop-by-hop headers dropped)."""
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])
               if k.decode("latin-1").lower() not in HOP_HEADERS]
    return {"status": int(message["status"]), "headers": headers}


class AsgiCall:
    """One HTTP request run against an ASGI app in this process, its response as an async iterator."""

    def __init__(self, app: Any, method: str, path: str, query: bytes, headers: list, body: bytes):
        self.app, self.body = app, body
        self.scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                      "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
                      "root_path": "", "query_string": query, "client": ("127.0.0.1", 0),
                      "server": ("127.0.0.1", 0),
                      "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]}
        self.messages: asyncio.Queue = asyncio.Queue()
        self.gone = asyncio.Event()
        self._body_sent = False

    async def _receive(self) -> dict:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict) -> None:
        await self.messages.put(message)

    async def _run(self) -> None:
        try:
            await self.app(self.scope, self._receive, self._send)
        except Exception as e:  # noqa: BLE001 - reported to the router as a 500
            logger.exception("the replica's app failed")
            await self.messages.put(e)
        finally:
            await self.messages.put(None)

    async def __aiter__(self) -> AsyncIterator[Any]:
        task = asyncio.ensure_future(self._run())
        try:
            while True:
                message = await self.messages.get()
                if message is None:
                    return
                if isinstance(message, Exception):
                    raise message
                if message["type"] == "http.response.start":
                    yield head_of(message)
                elif message["type"] == "http.response.body":
                    if message.get("body"):
                        yield bytes(message["body"])
                    if not message.get("more_body"):
                        return
        finally:
            self.gone.set()  # done, or the caller went away: the app sees the disconnect and aborts
            if not task.done():
                try:
                    await asyncio.wait_for(asyncio.shield(task), DISCONNECT_GRACE_S)
                except BaseException:  # noqa: BLE001 - stop it the hard way
                    task.cancel()


class EngineReplica:
    """The deployment's class: loads the engine once per replica process (Ray restarts dead ones)."""

    def __init__(self, spec: ReplicaSpec):
        from ..server.app import create_app
        from ..server.launch import load_engine

        os.environ.update(spec.env)
        logging.getLogger("sgl_jupyter").setLevel(spec.log_level.upper())
        self.spec = spec
        self.engine = load_engine(dict(spec.engine_kwargs))
        self.app = create_app(self.engine, served_model_name=spec.served_model_name)
        self._lifespan: Any = None
        self._start_lock: Optional[asyncio.Lock] = None

    async def _ensure_started(self) -> None:
        # The app's lifespan (metrics subscription) runs on the replica's event loop, once.
        if self._lifespan is not None:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._lifespan is None:
                lifespan = self.app.router.lifespan_context(self.app)
                await lifespan.__aenter__()
                self._lifespan = lifespan

    async def call(self, method: str, path: str, query: bytes, headers: list, body: bytes) -> AsyncIterator[Any]:
        """Stream one HTTP request through the single server's app: head dict, then body bytes."""
        await self._ensure_started()
        async for item in AsgiCall(self.app, method, path, query, headers, body):
            yield item

    def info(self) -> dict:
        """Who this replica is (index, pid for fault drills, device) and its engine's load."""
        info = self.engine.get_server_info()
        return {"index": self.spec.index, "pid": os.getpid(), "device": info.get("device"),
                "num_running_reqs": info.get("num_running_reqs", 0),
                "num_queue_reqs": info.get("num_queue_reqs", 0),
                "cache_hit_rate": info.get("cache_hit_rate", 0.0),
                "token_throughput": info.get("token_throughput", 0.0)}

    def check_health(self) -> None:
        """Ray Serve's health probe: a replica whose scheduler thread died is replaced."""
        thread = getattr(self.engine, "_thread", None)
        if thread is not None and not thread.is_alive():
            raise RuntimeError(f"replica {self.spec.index}: the engine's scheduler thread has stopped")

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            try:
                engine.shutdown()
            except Exception:  # noqa: BLE001 - the process is going away
                pass


def replica_deployment(spec: ReplicaSpec, health_check_period_s: float = 2.0) -> Any:
    """``EngineReplica`` bound as deployment ``replica-<index>`` (one replica: the router picks it by name)."""
    from ray import serve

    options: dict[str, Any] = {"num_cpus": spec.num_cpus}
    if spec.num_gpus:
        options["num_gpus"] = spec.num_gpus
    deployment = serve.deployment(
        EngineReplica, name=f"replica-{spec.index}", num_replicas=1, max_ongoing_requests=4096,
        ray_actor_options=options, health_check_period_s=health_check_period_s, health_check_timeout_s=30,
        graceful_shutdown_timeout_s=5, graceful_shutdown_wait_loop_s=0.5)
    return deployment.bind(spec)
