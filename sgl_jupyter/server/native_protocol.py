"""SGLang's native request schema (POST /generate), as ``sglang.RuntimeEndpoint`` sends it.

Every optional field may arrive as ``null``, and fields we do not know are accepted and ignored, so
SGLang's own client runs unchanged. Ranges are checked by the engine (``SamplingParams``), whose
``InvalidRequestError`` names the field; the server answers it with HTTP 400.
"""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt

# Fields SGLang's client may send that change the answer and that we do not implement: refused when
# set, so the caller never silently gets something else than asked.
UNSUPPORTED_SAMPLING = ("stop_regex", "logit_bias", "custom_params")
UNSUPPORTED_TOP_LEVEL = ("image_data", "audio_data", "video_data", "input_embeds", "lora_path",
                         "custom_logit_processor", "return_hidden_states", "session_params")


class NativeSamplingParams(BaseModel):
    model_config = ConfigDict(extra="allow")

    max_new_tokens: Optional[int] = None
    min_new_tokens: Optional[int] = None
    n: Optional[int] = None
    stop: Union[str, list[str], None] = None
    stop_token_ids: Union[StrictInt, list[StrictInt], None] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    frequency_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    repetition_penalty: Optional[float] = None
    ignore_eos: Optional[bool] = None
    skip_special_tokens: Optional[bool] = None
    spaces_between_special_tokens: Optional[bool] = None
    no_stop_trim: Optional[bool] = None
    regex: Optional[str] = None
    json_schema: Union[str, dict[str, Any], None] = None
    ebnf: Optional[str] = None
    seed: Optional[int] = None
    sampling_seed: Optional[int] = None


class GenerateReqInput(BaseModel):
    """One prompt (``text`` or ``input_ids``) or a batch (a list of either)."""

    model_config = ConfigDict(extra="allow")

    text: Union[str, list[str], None] = None
    input_ids: Union[list[StrictInt], list[list[StrictInt]], None] = None
    sampling_params: Union[NativeSamplingParams, list[NativeSamplingParams], None] = None
    rid: Union[str, list[str], None] = None
    return_logprob: Union[bool, list[bool], None] = None
    logprob_start_len: Union[int, list[int], None] = None
    top_logprobs_num: Union[int, list[int], None] = None
    return_text_in_logprobs: Optional[bool] = None
    stream: Optional[bool] = None


class AbortReqInput(BaseModel):
    model_config = ConfigDict(extra="allow")

    rid: str = Field("", description="The request id to abort (prefix of its batch/n parts).")


class FlushCacheInput(BaseModel):
    model_config = ConfigDict(extra="allow")

    empty_cache: Optional[bool] = None


class GenerateResponse(BaseModel):
    text: str
    output_ids: list[int] = []
    meta_info: dict[str, Any]


class ModelInfo(BaseModel):
    model_path: str
    tokenizer_path: Optional[str] = None
    is_generation: bool = True
    served_model_name: str
    architectures: Optional[list[str]] = None
    model_type: Optional[str] = None
    max_context_length: int
