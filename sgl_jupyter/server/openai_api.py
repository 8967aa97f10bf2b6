"""OpenAI-compatible routes: /v1/completions, /v1/chat/completions, /v1/models."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from .errors import APIError, ErrorResponseDoc
from .openai_chat import create_chat_completion
from .openai_completions import create_completion
from .protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)
from .state import ServerState

router = APIRouter(prefix="/v1", tags=["OpenAI"])
_ERRORS = {400: ErrorResponseDoc, 401: ErrorResponseDoc, 503: ErrorResponseDoc}


def _state(request: Request) -> ServerState:
    return request.app.state.sgl


@router.post("/completions", response_model=None,
             responses={200: {"model": CompletionResponse, "description": "A completion, or Server-Sent "
                              "Events of text_completion chunks when stream=true"}, **_ERRORS})
async def completions(request: Request, body: CompletionRequest) -> Response:
    return await create_completion(_state(request), request, body)


@router.post("/chat/completions", response_model=None,
             responses={200: {"model": ChatCompletionResponse, "description": "A chat completion, or "
                              "Server-Sent Events of chat.completion.chunk when stream=true"}, **_ERRORS})
async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
    return await create_chat_completion(_state(request), request, body)


def _card(state: ServerState) -> dict:
    return {"id": state.served_model_name, "object": "model", "created": state.created, "owned_by": "sgl_jupyter",
            "root": state.engine.args.model_path, "max_model_len": state.max_context}


@router.get("/models", response_model=ModelList)
async def models(request: Request) -> dict:
    return {"object": "list", "data": [_card(_state(request))]}


@router.get("/models/{model_id:path}", response_model=ModelCard, responses={404: ErrorResponseDoc})
async def model(request: Request, model_id: str) -> dict:
    state = _state(request)
    if model_id != state.served_model_name:
        raise APIError(404, f"model {model_id!r} is not served here; this server serves "
                            f"{state.served_model_name!r} (see /v1/models)", param="model")
    return _card(state)
