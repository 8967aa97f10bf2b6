"""The cluster's HTTP ingress: a Ray Serve deployment that speaks the single server's API by handing
each request to one engine replica (which runs the single server's own app), chosen by a routing
policy, and relaying the answer chunk by chunk. Cluster-wide routes fan out: /flush_cache and
/abort_request to every replica, /get_server_info and /metrics merged (plus the router's counters).

A replica that dies costs only its own requests: a request that has not started answering is retried
on another replica, a stream already under way ends with an error event; the dead replica is left out
until Ray Serve has restarted it and it answers again.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from ..server.errors import APIError, error_body
from ..server.generation import SSE_DONE, sse
from .aggregate import merge_metrics, merge_server_info, router_metrics
from .policies import Policy, make_policy

logger = logging.getLogger(__name__)

ROUTED_PATHS = frozenset({"/generate", "/v1/completions", "/v1/chat/completions"})
FANOUT_TIMEOUT_S = 15.0
PROBE_TIMEOUT_S = 3.0
PROBE_PERIOD_S = 1.0


@dataclass
class RouterConfig:
    policy: str = "cache-aware"
    request_timeout_s: float = 900.0
    policy_kwargs: dict = field(default_factory=dict)


@dataclass
class ReplicaState:
    index: int
    healthy: bool = True
    in_flight: int = 0
    routed_requests: int = 0
    matched_prefix_chars: int = 0
    failures: int = 0
    pid: Optional[int] = None

    def public(self) -> dict:
        return {"index": self.index, "healthy": self.healthy, "in_flight": self.in_flight,
                "routed_requests": self.routed_requests, "matched_prefix_chars": self.matched_prefix_chars,
                "failures": self.failures, "pid": self.pid}


class ReplicaGone(Exception):
    """The replica's process died or cannot be reached (Ray Serve restarts it)."""


def routing_key(path: str, body: bytes) -> str:
    """The text the cache-aware policy matches: the prompt as the replica will see it, approximately
    (chat messages joined with their roles; token ids as numbers)."""
    try:
        data = json.loads(body) if body else {}
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(data, dict):
        return ""
    prompt = data.get("text", data.get("prompt"))
    if prompt is None and data.get("input_ids") is not None:
        prompt = data["input_ids"]
    if prompt is None and isinstance(data.get("messages"), list):
        parts = []
        for m in data["messages"]:
            if not isinstance(m, dict):
                continue
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            parts.append(f"<{m.get('role', '')}>{content or ''}")
        return "\n".join(parts)
    if isinstance(prompt, list):
        if prompt and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch: route by its first prompt
        if isinstance(prompt, list):
            return " ".join(str(t) for t in prompt)
    return prompt if isinstance(prompt, str) else ""


def _is_gone(e: BaseException) -> bool:
    from ray import exceptions as rex

    if isinstance(e, rex.RayTaskError):
        return False  # the replica's code raised: it is alive
    return isinstance(e, (rex.RayActorError, getattr(rex, "ActorUnavailableError", rex.RayActorError),
                          rex.RaySystemError))


class RouterCore:
    """Routing, counters and relaying; ``handles[i]`` is replica i's Ray Serve deployment handle."""

    def __init__(self, handles: Sequence[Any], config: RouterConfig):
        self.handles = list(handles)
        self.config = config
        self.policy: Policy = make_policy(config.policy, len(self.handles), **config.policy_kwargs)
        self.replicas = [ReplicaState(i) for i in range(len(self.handles))]
        self.imbalance_fallbacks = 0
        self._prober: Optional[asyncio.Task] = None

    def set_policy(self, name: str) -> None:
        """Switch the routing policy (benchmarks compare policies on one cluster); the trees start empty."""
        self.policy = make_policy(name, len(self.handles), **self.config.policy_kwargs)
        self.config.policy = name

    def routing_stats(self) -> dict:
        return {"policy": self.policy.name, "imbalance_fallbacks": self.imbalance_fallbacks,
                "routed": [r.routed_requests for r in self.replicas],
                "matched_prefix_chars": [r.matched_prefix_chars for r in self.replicas]}

    # ------------------------------------------------------------------ replica calls
    def _stream(self, i: int, method: str, path: str, query: bytes, headers: list, body: bytes) -> Any:
        return self.handles[i].options(stream=True).call.remote(method, path, query, headers, body)

    async def fetch(self, i: int, method: str, path: str, body: bytes = b"",
                    timeout: float = FANOUT_TIMEOUT_S) -> tuple[int, bytes]:
        """(status, body) of one whole request to replica i; ``ReplicaGone`` if it cannot answer."""
        gen = self._stream(i, method, path, b"", [("content-type", "application/json")], body)

        async def collect() -> tuple[int, bytes]:
            status, chunks = 500, []
            async for item in gen:
                if isinstance(item, dict):
                    status = item["status"]
                else:
                    chunks.append(item)
            return status, b"".join(chunks)

        try:
            return await asyncio.wait_for(collect(), timeout)
        except asyncio.TimeoutError:
            gen.cancel()
            raise ReplicaGone(f"replica {i} did not answer {path} within {timeout:.0f}s") from None
        except Exception as e:  # noqa: BLE001
            if _is_gone(e):
                self._mark_down(i, e)
                raise ReplicaGone(f"replica {i} is unavailable ({type(e).__name__})") from e
            raise

    async def fan_out(self, method: str, path: str, body: bytes = b"") -> list[Any]:
        """Each healthy replica's (status, body), or the exception it met; None for replicas left out."""
        async def one(i: int) -> Any:
            if not self.replicas[i].healthy:
                return None
            try:
                return await self.fetch(i, method, path, body)
            except Exception as e:  # noqa: BLE001 - reported per replica
                return e
        return list(await asyncio.gather(*(one(i) for i in range(len(self.handles)))))

    # ------------------------------------------------------------------ health
    def _mark_down(self, i: int, error: BaseException) -> None:
        r = self.replicas[i]
        if r.healthy:
            logger.warning("replica %d is down (%s); routing around it until Ray Serve restarts it",
                           i, type(error).__name__)
        r.healthy = False
        self.policy.forget(i)
        self._ensure_prober()

    def _ensure_prober(self) -> None:
        if self._prober is None or self._prober.done():
            self._prober = asyncio.ensure_future(self._probe_down())

    async def _probe_down(self) -> None:
        """Ask each down replica who it is until it answers (Ray Serve has restarted it)."""
        while any(not r.healthy for r in self.replicas):
            await asyncio.sleep(PROBE_PERIOD_S)
            for r in self.replicas:
                if r.healthy:
                    continue
                try:
                    info = await asyncio.wait_for(self.handles[r.index].info.remote(), PROBE_TIMEOUT_S)
                except BaseException as e:  # noqa: BLE001 - still down
                    if isinstance(e, asyncio.CancelledError) and asyncio.current_task().cancelling():
                        raise
                    continue
                r.pid, r.healthy = info.get("pid"), True
                logger.warning("replica %d is back (pid %s)", r.index, r.pid)

    def healthy(self) -> list[int]:
        return [r.index for r in self.replicas if r.healthy]

    # ------------------------------------------------------------------ routing
    def choose(self, path: str, key: str, exclude: set[int]) -> int:
        candidates = [i for i in self.healthy() if i not in exclude]
        if not candidates:
            raise APIError(503, "no engine replica is available (all are down or restarting; Ray Serve restarts "
                                "dead replicas): retry in a few seconds", headers={"Retry-After": "5"})
        loads = [r.in_flight for r in self.replicas]
        if path not in ROUTED_PATHS:
            return min(candidates, key=lambda i: (loads[i], i))
        decision = self.policy.choose(key, loads, candidates)
        r = self.replicas[decision.replica]
        r.routed_requests += 1
        r.matched_prefix_chars += decision.matched_chars
        self.imbalance_fallbacks += int(decision.imbalance_fallback)
        return decision.replica

    async def forward(self, request: Request) -> Response:
        """Send the request to the chosen replica; retry elsewhere if that one dies before answering."""
        body = await request.body()
        path = request.url.path
        key = routing_key(path, body) if path in ROUTED_PATHS else ""
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in ("authorization", "host")]
        tried: set[int] = set()
        while True:
            i = self.choose(path, key, tried)
            tried.add(i)
            r = self.replicas[i]
            r.in_flight += 1
            gen = self._stream(i, request.method, path, request.url.query.encode(), headers, body)
            try:
                head = await asyncio.wait_for(gen.__anext__(), self.config.request_timeout_s)
            except BaseException as e:
                r.in_flight -= 1
                if isinstance(e, Exception) and _is_gone(e):
                    r.failures += 1
                    self._mark_down(i, e)
                    continue  # nothing was sent: another replica takes it
                gen.cancel()
                if isinstance(e, asyncio.TimeoutError):
                    raise APIError(504, f"replica {i} did not answer within {self.config.request_timeout_s:.0f}s"
                                   ) from None
                if isinstance(e, StopAsyncIteration):
                    raise APIError(502, f"replica {i} closed the request without an answer") from None
                if isinstance(e, Exception):
                    raise APIError(500, f"replica {i} failed: {type(e).__name__}: {str(e)[:500]}") from e
                raise
            if not isinstance(head, dict):
                r.in_flight -= 1
                gen.cancel()
                raise APIError(502, f"replica {i} answered without a status line")
            media = dict((k.lower(), v) for k, v in head["headers"]).get("content-type", "")
            return StreamingResponse(self._relay(i, gen, media.startswith("text/event-stream")),
                                     status_code=head["status"], headers=dict(head["headers"]))

    async def _relay(self, i: int, gen: Any, events: bool) -> AsyncIterator[bytes]:
        """Replica i's body chunks as they come; if it dies mid-stream, an error event (SSE) ends it."""
        done = False
        try:
            async for chunk in gen:
                yield chunk
            done = True
        except Exception as e:  # noqa: BLE001
            gone = _is_gone(e)
            if gone:
                self.replicas[i].failures += 1
                self._mark_down(i, e)
            message = (f"replica {i} died while answering; this request is lost, retry it (Ray Serve restarts "
                       f"the replica)" if gone else f"replica {i} failed mid-answer: {type(e).__name__}: {e}")
            logger.warning("%s", message)
            done = True
            if events:
                yield sse(error_body(503 if gone else 500, message))
                yield SSE_DONE
        finally:
            self.replicas[i].in_flight -= 1
            if not done:  # the client went away: cancel the replica's call, which aborts the engine request
                gen.cancel()

    # ------------------------------------------------------------------ cluster-wide routes
    async def flush_cache(self) -> Response:
        results = await self.fan_out("POST", "/flush_cache")
        refused = [f"replica {i}: {res[1].decode(errors='replace').strip()[:200]}"
                   for i, res in enumerate(results) if isinstance(res, tuple) and res[0] != 200]
        missing = [f"replica {i}: {res}" for i, res in enumerate(results) if isinstance(res, Exception)]
        self.policy.forget()
        if refused or missing:
            raise APIError(400, "the cache was not flushed everywhere: " + "; ".join(refused + missing))
        return PlainTextResponse(f"Cache flushed on {sum(1 for r in results if r is not None)} replicas.\n")

    async def abort(self, body: bytes) -> Response:
        await self.fan_out("POST", "/abort_request", body)
        return Response(status_code=200)

    async def server_info(self) -> dict:
        results = await self.fan_out("GET", "/get_server_info")
        infos: list[Optional[dict]] = []
        entries = []
        for r, res in zip(self.replicas, results):
            entry = r.public()
            info = None
            if isinstance(res, tuple) and res[0] == 200:
                info = json.loads(res[1])
                for k in ("num_running_reqs", "num_queue_reqs", "cache_hit_rate", "token_throughput"):
                    entry[k] = info.get(k)
                entry["kv_used"] = (info.get("kv") or {}).get("used")
            elif isinstance(res, Exception):
                entry["error"] = str(res)
            infos.append(info)
            entries.append(entry)
        router = {"policy": self.policy.name, "imbalance_fallbacks": self.imbalance_fallbacks,
                  "healthy_replicas": len(self.healthy())}
        if not any(infos):
            raise APIError(503, "no engine replica answered /get_server_info (all down or restarting)",
                           headers={"Retry-After": "5"})
        return merge_server_info(infos, entries, router)

    async def metrics(self) -> str:
        results = await self.fan_out("GET", "/metrics")
        texts = [res[1].decode() for res in results if isinstance(res, tuple) and res[0] == 200]
        return merge_metrics(texts) + router_metrics(self.policy.name, [r.public() for r in self.replicas],
                                                     self.imbalance_fallbacks)

    async def refresh_pids(self) -> None:
        async def one(r: ReplicaState) -> None:
            try:
                r.pid = (await asyncio.wait_for(self.handles[r.index].info.remote(), PROBE_TIMEOUT_S))["pid"]
            except Exception:  # noqa: BLE001 - reported as unknown
                pass
        await asyncio.gather(*(one(r) for r in self.replicas if r.healthy))
