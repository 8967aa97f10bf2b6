"""SGLang's native endpoints: /generate, /get_model_info, /get_server_info, /flush_cache,
/abort_request, /health, /health_generate. Shapes follow SGLang 0.5.6 (see SGLANG_NATIVE_API.md), so
``sglang.RuntimeEndpoint`` and our own ``RuntimeEndpoint`` both work against this server."""
from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, AsyncIterator, Optional

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from .errors import APIError, ErrorResponseDoc
from .generation import SSE_DONE, EngineStreams, SSEResponse, generate_once, sse
from .native_protocol import (
    UNSUPPORTED_SAMPLING,
    UNSUPPORTED_TOP_LEVEL,
    AbortReqInput,
    FlushCacheInput,
    GenerateReqInput,
    GenerateResponse,
    ModelInfo,
    NativeSamplingParams,
)
from .openai_common import guard_sampling
from .state import ServerState

logger = logging.getLogger(__name__)
router = APIRouter(tags=["SGLang native"])

HEALTH_GENERATE_TIMEOUT_S = 20.0


def _state(request: Request) -> ServerState:
    return request.app.state.sgl


def server_info(engine: Any) -> dict:
    """``engine.get_server_info()`` read from a server thread: the engine's counters are written by the
    scheduler thread meanwhile, so a rare concurrent-mutation error is retried."""
    for attempt in range(5):
        try:
            return engine.get_server_info()
        except RuntimeError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def _sampling_dict(sp: NativeSamplingParams, where: str) -> dict:
    extra = sp.model_extra or {}
    for name in UNSUPPORTED_SAMPLING:
        if extra.get(name) not in (None, {}, [], ""):
            raise APIError(400, f"{where}.{name} is not supported by this server; leave it null",
                           param=f"{where}.{name}")
    d = sp.model_dump(exclude_none=True, exclude=set(extra))
    if "seed" not in d and sp.sampling_seed is not None:
        d["seed"] = d.pop("sampling_seed")
    d.pop("sampling_seed", None)
    return guard_sampling(d)


def engine_kwargs(body: GenerateReqInput) -> tuple[dict, int]:
    """The engine call for a /generate body, and its weight (sequences) for admission."""
    extra = body.model_extra or {}
    for name in UNSUPPORTED_TOP_LEVEL:
        if extra.get(name) not in (None, [], {}, False, ""):
            raise APIError(400, f"{name} is not supported by this server (text-only model); leave it null",
                           param=name)
    if (body.text is None) == (body.input_ids is None):
        raise APIError(400, "give exactly one of `text` and `input_ids`", param="text")
    sp = body.sampling_params
    if isinstance(sp, list):
        params: Any = [_sampling_dict(p, f"sampling_params[{i}]") for i, p in enumerate(sp)]
        n = max((p.get("n", 1) for p in params), default=1)
    else:
        params = _sampling_dict(sp, "sampling_params") if sp is not None else {}
        n = params.get("n", 1)
    if body.text is not None:
        count = len(body.text) if isinstance(body.text, list) else 1
    else:
        count = len(body.input_ids) if body.input_ids and isinstance(body.input_ids[0], list) else 1
    for name in ("return_logprob", "logprob_start_len", "top_logprobs_num"):
        value = getattr(body, name)
        if isinstance(value, list) and len(value) != count:
            raise APIError(400, f"{name}: a list needs one value per prompt ({count}), got {len(value)}",
                           param=name)
    rid = body.rid if body.rid is not None else uuid.uuid4().hex
    batch = isinstance(body.text, list) or bool(body.input_ids and isinstance(body.input_ids[0], list))
    if isinstance(rid, list):
        if not batch and len(rid) == 1:
            rid = rid[0]
        elif not batch or len(rid) != count:
            raise APIError(400, f"rid: give one id per prompt ({count}), or a single string", param="rid")
    kwargs = {"prompt": body.text, "input_ids": body.input_ids, "sampling_params": params, "rid": rid,
              "return_logprob": body.return_logprob if body.return_logprob is not None else False,
              "logprob_start_len": body.logprob_start_len if body.logprob_start_len is not None else -1,
              "top_logprobs_num": body.top_logprobs_num if body.top_logprobs_num is not None else 0,
              "return_text_in_logprobs": bool(body.return_text_in_logprobs)}
    weight = count * (n if isinstance(n, int) and n > 0 else 1)
    return kwargs, weight


@router.post("/generate", response_model=None,
             responses={200: {"model": GenerateResponse, "description": "A result, a list of results "
                              "(batch), or Server-Sent Events when stream=true"}, 400: ErrorResponseDoc,
                        503: ErrorResponseDoc})
async def generate(request: Request, body: GenerateReqInput) -> Response:
    state = _state(request)
    kwargs, weight = engine_kwargs(body)
    if body.stream:
        streams = await EngineStreams(state, weight).open([kwargs])
        return SSEResponse(_native_events(streams), on_close=streams.close)
    result = await generate_once(state, request, weight, **kwargs)
    return JSONResponse(result)


async def _native_events(streams: EngineStreams) -> AsyncIterator[bytes]:
    # SGLang's convention: every event carries the whole text so far; the client slices what is new.
    async for _, chunk in streams.chunks():
        yield sse({"text": chunk["text"], "output_ids": chunk["output_ids"], "meta_info": chunk["meta_info"]})
    yield SSE_DONE


@router.get("/get_model_info", response_model=ModelInfo)
async def get_model_info(request: Request) -> dict:
    state = _state(request)
    engine = state.engine
    cfg = engine.hf_config
    return {"model_path": engine.args.model_path,
            "tokenizer_path": engine.args.tokenizer_path or engine.args.model_path,
            "is_generation": True, "served_model_name": state.served_model_name,
            "architectures": list(getattr(cfg, "architectures", None) or []) or None,
            "model_type": getattr(cfg, "model_type", None), "max_context_length": state.max_context}


@router.get("/get_server_info")
async def get_server_info(request: Request) -> dict:
    state = _state(request)
    info = server_info(state.engine)
    info["served_model_name"] = state.served_model_name
    adm = state.admission
    info["http_admission"] = {"limit": adm.limit, "active": adm.active, "rejected": adm.rejected}
    return info


async def _flush(request: Request) -> Response:
    ok = await asyncio.to_thread(_state(request).engine.flush_cache)
    if not ok:
        raise APIError(400, "the cache was not flushed: requests are running or waiting; retry when idle")
    return PlainTextResponse("Cache flushed.\nPlease check backend logs for more details. (When there are "
                             "running or waiting requests, the operation will not be performed.)\n")


@router.post("/flush_cache", response_class=PlainTextResponse, responses={400: ErrorResponseDoc})
async def flush_cache(request: Request, body: Optional[FlushCacheInput] = None) -> Response:
    """Drop the prefix (radix) cache; refused (400) while requests are in flight."""
    return await _flush(request)


@router.get("/flush_cache", response_class=PlainTextResponse, responses={400: ErrorResponseDoc})
async def flush_cache_get(request: Request) -> Response:
    return await _flush(request)


@router.post("/abort_request", response_class=Response, responses={200: {"description": "Done.",
                                                                          "content": {}}})
async def abort_request(request: Request, body: AbortReqInput) -> Response:
    if body.rid:
        _state(request).engine.abort(body.rid)
    return Response(status_code=200)


@router.get("/health", response_class=Response, responses={200: {"description": "The server is up.",
                                                                 "content": {}}})
async def health() -> Response:
    """Liveness: always answers (and never needs the API key)."""
    return Response(status_code=200)


@router.get("/health_generate", response_class=Response,
            responses={200: {"description": "The engine generates.", "content": {}}, 503: ErrorResponseDoc})
async def health_generate(request: Request) -> Response:
    """Readiness: the engine produces a token (or is visibly producing them for others)."""
    state = _state(request)
    engine = state.engine
    info = server_info(engine)
    if info.get("num_running_reqs", 0) > 0 and info.get("token_throughput", 0.0) > 0:
        return Response(status_code=200)
    token = getattr(engine.tokenizer, "bos_token_id", None)
    token = token if token is not None else 0
    try:
        await asyncio.wait_for(engine.async_generate(input_ids=[token], sampling_params={
            "max_new_tokens": 1, "temperature": 0}, rid=f"health-{uuid.uuid4().hex}"),
            HEALTH_GENERATE_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise APIError(503, f"the engine did not produce a token within {HEALTH_GENERATE_TIMEOUT_S:.0f}s") from None
    except Exception as e:  # noqa: BLE001 - any failure means "not healthy"
        raise APIError(503, f"the engine cannot generate: {e}") from e
    return Response(status_code=200)


def _not_supported(name: str):
    async def endpoint() -> Response:
        raise APIError(501, f"/{name} is not supported by sgl_jupyter's server", type="not_implemented")
    return endpoint


for _name in ("start_profile", "stop_profile", "encode", "concate_and_append_request"):
    router.add_api_route(f"/{_name}", _not_supported(_name), methods=["GET", "POST"], include_in_schema=False)
