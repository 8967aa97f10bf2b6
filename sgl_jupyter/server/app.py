"""The FastAPI app over one running Engine: OpenAI and SGLang-native routes, /metrics, API-key auth,
request-size and admission limits, errors in OpenAI's shape.

>>> app = create_app(engine, served_model_name="SmolLM2", api_key="secret")
>>> uvicorn.run(app, host="127.0.0.1", port=30000)     # or ServerThread(engine).start()
"""
from __future__ import annotations

import hmac
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..engine.metrics import CONTENT_TYPE, EngineMetrics
from . import native_api, openai_api
from .errors import error_response, install_error_handlers
from .native_api import server_info
from .protocol import ErrorResponse
from .state import Admission, ServerState

DEFAULT_MAX_BODY_BYTES = 32 * 2**20
OPEN_PATHS = frozenset({"/health"})  # answered without the API key (load balancers probe it)
STREAMING_ROUTES = ("/v1/completions", "/v1/chat/completions", "/generate")


class GateMiddleware:
    """API key (``Authorization: Bearer``) on every path but /health, and a cap on the body size.
    Pure ASGI (not BaseHTTPMiddleware) so streaming and disconnect detection pass through untouched."""

    def __init__(self, app: ASGIApp, api_key: Optional[str], max_body_bytes: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and scope.get("path") not in OPEN_PATHS:
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                response = error_response(
                    401, "missing or wrong API key: send the header `Authorization: Bearer <api-key>` "
                         "(the key the server was started with, --api-key)",
                    headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body_bytes
            except ValueError:
                too_big = False
            if too_big:
                response = error_response(413, f"the request body is larger than {self.max_body_bytes} bytes")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(engine: Any, served_model_name: Optional[str] = None, api_key: Optional[str] = None, *,
               max_queued_requests: Optional[int] = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """An ASGI app serving ``engine`` (an ``sgl_jupyter.Engine`` that is already running).

    ``served_model_name``: the name in /v1/models (default: the engine's, else its model path).
    ``api_key``: required as a Bearer token on every route but /health.
    ``max_queued_requests``: sequences allowed to wait beyond the engine's running batch before the
    server answers 503 + Retry-After (default: the engine's ``max_queued_requests``; None: no cap).
    """
    name = served_model_name or engine.args.served_model_name or engine.args.model_path
    queued = max_queued_requests if max_queued_requests is not None else engine.args.max_queued_requests
    limit = None if queued is None else int(engine.max_running) + int(queued)
    state = ServerState(engine=engine, served_model_name=str(name), metrics=EngineMetrics(model_name=str(name)),
                        admission=Admission(limit), api_key=api_key)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        unsubscribe = state.metrics.attach(engine)
        try:
            yield
        finally:
            unsubscribe()

    from .. import __version__

    app = FastAPI(title="sgl_jupyter server", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible (/v1/...) and SGLang-native (/generate, ...) APIs over "
                              "an in-process sgl_jupyter Engine.")
    app.state.sgl = state
    install_error_handlers(app)
    app.include_router(openai_api.router)
    app.include_router(native_api.router)

    @app.get("/metrics", tags=["Observability"], response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics with SGLang's names (sglang_request_success_total, ...)."""
        state.metrics.refresh(server_info(engine))
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    app.add_middleware(GateMiddleware, api_key=api_key, max_body_bytes=max_body_bytes)
    install_openapi(app)
    return app


def install_openapi(app: FastAPI) -> None:
    """Document what the server really answers: validation errors are 400 in OpenAI's error shape
    (FastAPI's default docs say 422 with its own body)."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {})
            error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
            error_content = {"application/json": {"schema": error_ref}}
            for route, path in schema.get("paths", {}).items():
                for op in path.values():
                    responses = op.get("responses", {})
                    if responses.pop("422", None) is not None or op.get("requestBody"):
                        responses.setdefault("400", {"description": "Invalid request (OpenAI error shape)"})
                    for code, resp in responses.items():
                        if code[0] in "45":
                            resp["content"] = error_content
                    if route in STREAMING_ROUTES:
                        responses["200"].setdefault("content", {})["text/event-stream"] = {
                            "schema": {"description": "Server-Sent Events when stream=true"}}
            for name in ("HTTPValidationError", "ValidationError"):
                schema["components"]["schemas"].pop(name, None)
            schema["components"]["schemas"].setdefault("ErrorResponse", ErrorResponse.model_json_schema(
                ref_template="#/components/schemas/{model}"))
            for sub, body in ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}").get(
                    "$defs", {}).items():
                schema["components"]["schemas"].setdefault(sub, body)
            schema["components"]["schemas"]["ErrorResponse"].pop("$defs", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
