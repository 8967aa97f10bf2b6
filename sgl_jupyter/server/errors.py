"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, for every failure:
our own checks, pydantic validation, unknown routes, and the engine's typed errors."""
from __future__ import annotations

import logging
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine.errors import EngineDeadError, EngineError, EngineOverloadedError, InvalidRequestError
from .protocol import ErrorResponse

logger = logging.getLogger(__name__)

ErrorResponseDoc = {"model": ErrorResponse, "description": "An error in OpenAI's shape"}
RETRY_AFTER_S = 2  # what a 503 tells the client to wait

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          422: "invalid_request_error", 499: "client_closed_request", 500: "server_error",
          503: "service_unavailable_error"}


class APIError(Exception):
    """An error answer: raise it anywhere in a handler."""

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None, type: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers
        self.type = type or _TYPES.get(status, "error")


def error_body(status: int, message: str, param: Optional[str] = None, type: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type or _TYPES.get(status, "error"), "param": param,
                      "code": status}}


def error_response(status: int, message: str, param: Optional[str] = None,
                   headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


def overloaded(message: str) -> APIError:
    return APIError(503, message, headers={"Retry-After": str(RETRY_AFTER_S)})


def from_engine_error(e: BaseException) -> APIError:
    """Map the engine's typed errors to HTTP answers."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, InvalidRequestError):
        return APIError(400, str(e))
    if isinstance(e, EngineOverloadedError):
        return overloaded(str(e))
    if isinstance(e, EngineDeadError):
        return APIError(503, f"{e} (the server's engine is not running; restart the server)")
    if isinstance(e, EngineError):
        return APIError(500, str(e))
    logger.exception("unexpected error while serving a request", exc_info=e)
    return APIError(500, f"internal server error: {type(e).__name__}: {e}")


def _validation_message(exc: RequestValidationError) -> tuple[str, Optional[str]]:
    parts, first_param = [], None
    for err in exc.errors()[:5]:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            param = None
            parts.append(f"the body is not valid JSON ({ctx.get('error', 'parse error')}); check it with "
                         "`curl -v` or a JSON linter")
        elif err.get("type") == "missing":
            parts.append(f"{param or 'body'}: field required")
        else:
            parts.append(f"{param or 'body'}: {err.get('msg')}")
        first_param = first_param or param
    return "; ".join(parts) or "invalid request", first_param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return error_response(e.status, e.message, e.param, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(e)
        return error_response(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        message = e.detail if isinstance(e.detail, str) else str(e.detail)
        if e.status_code == 404 and message == "Not Found":
            message = "no such endpoint; see /openapi.json for the API (OpenAI: /v1/..., SGLang: /generate)"
        return error_response(e.status_code, message, headers=getattr(e, "headers", None))

    @app.exception_handler(InvalidRequestError)
    async def _invalid(_: Request, e: InvalidRequestError) -> JSONResponse:
        return error_response(400, str(e))

    @app.exception_handler(EngineError)
    async def _engine(_: Request, e: EngineError) -> JSONResponse:
        err = from_engine_error(e)
        return error_response(err.status, err.message, headers=err.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        err = from_engine_error(e)
        return error_response(err.status, err.message)


def stream_error(e: BaseException) -> dict[str, Any]:
    """The ``data:`` payload that reports an error inside an already-started SSE stream."""
    err = from_engine_error(e)
    return error_body(err.status, err.message, err.param, err.type)
