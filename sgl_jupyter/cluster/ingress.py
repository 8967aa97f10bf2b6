"""The router's Ray Serve ingress deployment: the single server's gate (API key, body cap) and error
shapes, cluster-wide routes answered by ``RouterCore``, everything else relayed to a replica.

No ``from __future__ import annotations`` here: Ray Serve rebuilds the route signatures of an ingress
class and FastAPI must see real classes (``Request``), not strings.
"""
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .router import RouterConfig, RouterCore


def router_deployment(api_key: Optional[str], max_body_bytes: int, config: RouterConfig) -> Any:
    """The ingress deployment class (FastAPI app: the gate of the single server, then the routes)."""
    from ray import serve

    from ..server.app import GateMiddleware
    from ..server.errors import install_error_handlers

    app = FastAPI(title="sgl_jupyter router", description="OpenAI-compatible and SGLang-native APIs over "
                                                         "several engine replicas (Ray Serve).")
    install_error_handlers(app)
    app.add_middleware(GateMiddleware, api_key=api_key, max_body_bytes=max_body_bytes)
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]

    @serve.deployment(name="router", num_replicas=1, max_ongoing_requests=100_000,
                      ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class Router:
        def __init__(self, replicas: list):
            self.core = RouterCore(replicas, config)

        def set_policy(self, name: str) -> None:
            """Through the deployment handle only (no HTTP route): ``serve.get_app_handle(...).set_policy``."""
            self.core.set_policy(name)

        def routing_stats(self) -> dict:
            return self.core.routing_stats()

        @app.get("/health")
        async def health(self) -> Response:
            return Response(status_code=200)

        @app.api_route("/flush_cache", methods=["GET", "POST"])
        async def flush_cache(self) -> Response:
            return await self.core.flush_cache()

        @app.post("/abort_request")
        async def abort_request(self, request: Request) -> Response:
            return await self.core.abort(await request.body())

        @app.get("/get_server_info")
        async def get_server_info(self) -> JSONResponse:
            await self.core.refresh_pids()
            return JSONResponse(await self.core.server_info())

        @app.get("/metrics")
        async def metrics(self) -> Response:
            return Response(await self.core.metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

        @app.api_route("/{path:path}", methods=methods)
        async def proxy(self, request: Request, path: str) -> Response:
            return await self.core.forward(request)

    return Router
