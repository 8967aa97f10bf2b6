"""Programs on the in-process `sgl_jupyter.Engine`: no HTTP, same request dicts, the model's own template."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator, Optional

from ..chat_template import ChatTemplate, chat_template_for_tokenizer, get_chat_template
from .base import BaseBackend, Texts


class EngineBackend(BaseBackend):
    """Wraps an `Engine` (anything with its `generate`/`tokenizer`/`flush_cache` API)."""

    def __init__(self, engine: Any, chat_template_name: Optional[str] = None, owns_engine: bool = False):
        super().__init__()
        for attr in ("generate", "tokenizer", "flush_cache", "get_server_info"):
            if not hasattr(engine, attr):
                raise TypeError(f"EngineBackend needs an sgl_jupyter.Engine; {type(engine).__name__} has no {attr!r}")
        self.engine = engine
        self.owns_engine = owns_engine
        self.model_path = str(getattr(getattr(engine, "args", None), "model_path", "") or "")
        self.chat_template: ChatTemplate = (
            get_chat_template(chat_template_name) if chat_template_name
            else chat_template_for_tokenizer(engine.tokenizer, self.model_path))

    def __repr__(self) -> str:
        return f"EngineBackend({self.model_path or self.engine!r})"

    def get_model_name(self) -> str:
        return self.model_path

    def _to_request(self, sp):
        params, top = super()._to_request(sp)
        unsupported = [k for k in params if k not in _engine_sampling_fields()]
        if unsupported:  # the engine ignores unknown keys; a silently ignored stop_regex would be a wrong answer
            raise ValueError(f"gen({', '.join(unsupported)}=...) is not supported by the in-process engine")
        return params, top

    def _request(self, *, text: Optional[Texts] = None, input_ids: Any = None, sampling_params: dict,
                 rid: Optional[str] = None, **top_level: Any):
        return self.engine.generate(prompt=text, sampling_params=sampling_params, input_ids=input_ids, rid=rid,
                                    **top_level)

    def _request_stream(self, *, text: str, sampling_params: dict, rid: Optional[str] = None,
                        **top_level: Any) -> Iterator[tuple[str, dict]]:
        chunks = self.engine.generate(prompt=text, sampling_params=sampling_params, rid=rid, stream=True,
                                      **top_level)
        try:
            for chunk in chunks:
                yield chunk.get("delta", ""), chunk["meta_info"]
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def abort(self, rid: str) -> None:
        self.engine.abort(rid)

    def flush_cache(self) -> bool:
        return self.engine.flush_cache()

    def get_server_info(self) -> dict:
        return self.engine.get_server_info()

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def shutdown(self) -> None:
        if self.owns_engine:
            self.engine.shutdown()


@functools.lru_cache(maxsize=1)
def _engine_sampling_fields() -> frozenset:
    from ...engine.sampling import SamplingParams

    return frozenset(f.name for f in dataclasses.fields(SamplingParams))
