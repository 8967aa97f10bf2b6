"""Programs against a server speaking SGLang's native HTTP API (ours, or a real SGLang server).

Calls: GET /get_model_info (on construction: picks the chat template from `model_path`), POST /generate
(text or input_ids, sampling_params, logprob fields, `stream` as Server-Sent Events whose `text` is the
whole text so far), POST /flush_cache, GET /get_server_info.
"""
from __future__ import annotations

import json
from typing import Any, Iterator, Optional

import httpx

from ..chat_template import ChatTemplate, get_chat_template, get_chat_template_by_model_path
from .base import BaseBackend, Texts


class RuntimeEndpointError(RuntimeError):
    """The server answered with an error status; `status_code` and the server's `message` are kept."""

    def __init__(self, url: str, status_code: int, message: str):
        super().__init__(f"{url} answered HTTP {status_code}: {message}")
        self.url = url
        self.status_code = status_code
        self.message = message


class RuntimeEndpoint(BaseBackend):
    """A backend at `base_url` (e.g. ``http://localhost:30000``); `api_key` is sent as a Bearer token."""

    support_concate_and_append = False

    def __init__(self, base_url: str, api_key: Optional[str] = None, verify: Any = None,
                 chat_template_name: Optional[str] = None, timeout: Optional[float] = None):
        super().__init__()
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"RuntimeEndpoint needs a URL like 'http://localhost:30000', got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers, verify=True if verify is None else verify,
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        self.model_info: dict = self._get("/get_model_info")
        if "model_path" not in self.model_info:
            raise RuntimeError(f"{self.base_url}/get_model_info did not return a model_path: {self.model_info}")
        self.chat_template: ChatTemplate = (
            get_chat_template(chat_template_name) if chat_template_name
            else get_chat_template_by_model_path(self.model_info["model_path"]))

    def __repr__(self) -> str:
        return f"RuntimeEndpoint({self.base_url!r})"

    def get_model_name(self) -> str:
        return self.model_info["model_path"]

    # ------------------------------------------------------------------ HTTP
    def _send(self, method: str, path: str, body: Optional[dict] = None) -> httpx.Response:
        url = self.base_url + path
        try:
            return self._client.request(method, url, json=body)
        except httpx.TransportError as e:
            raise _connection_error(url, e) from e

    def _check(self, res: httpx.Response) -> None:
        if res.status_code != 200:
            raise RuntimeEndpointError(str(res.request.url), res.status_code, _error_message(res))

    def _get(self, path: str) -> Any:
        res = self._send("GET", path)
        self._check(res)
        return res.json()

    def _request(self, *, text: Optional[Texts] = None, input_ids: Any = None, sampling_params: dict,
                 rid: Optional[str] = None, **top_level: Any):
        body: dict[str, Any] = {"sampling_params": sampling_params, **top_level}
        if text is not None:
            body["text"] = text
        if input_ids is not None:
            body["input_ids"] = input_ids
        if rid is not None:
            body["rid"] = rid
        res = self._send("POST", "/generate", body)
        self._check(res)
        return res.json()

    def _request_stream(self, *, text: str, sampling_params: dict, rid: Optional[str] = None,
                        **top_level: Any) -> Iterator[tuple[str, dict]]:
        body: dict[str, Any] = {"text": text, "sampling_params": sampling_params, "stream": True, **top_level}
        if rid is not None:
            body["rid"] = rid
        url = self.base_url + "/generate"
        try:
            with self._client.stream("POST", url, json=body) as res:
                if res.status_code != 200:
                    res.read()
                    raise RuntimeEndpointError(url, res.status_code, _error_message(res))
                seen = 0
                for data in _sse_data(res.iter_bytes()):
                    if data == "[DONE]":
                        break
                    obj = json.loads(data)
                    if "error" in obj and "text" not in obj:
                        raise RuntimeEndpointError(url, 200, _message_of(obj))
                    new = obj["text"][seen:]
                    seen += len(new)
                    yield new, obj.get("meta_info", {})
        except httpx.TransportError as e:
            raise _connection_error(url, e) from e

    # ------------------------------------------------------------------ server calls
    def flush_cache(self, empty_cache: bool = True) -> bool:
        res = self._send("POST", "/flush_cache", {"empty_cache": empty_cache})
        self._check(res)
        return True

    def get_server_info(self) -> dict:
        return self._get("/get_server_info")

    def abort(self, rid: str) -> None:
        try:
            self._client.post(self.base_url + "/abort_request", json={"rid": rid}, timeout=5.0)
        except httpx.HTTPError:
            pass

    def shutdown(self) -> None:
        self._client.close()


def _connection_error(url: str, e: Exception) -> ConnectionError:
    return ConnectionError(
        f"cannot reach the SGLang server at {url} ({type(e).__name__}: {e}). Is it running? Start one with "
        "`python -m sgl_jupyter.launch_server --port 30000`, or check the host and port.")


def _message_of(obj: Any) -> str:
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict):
            return str(err.get("message", err))
        for key in ("message", "detail", "error"):
            if key in obj:
                return str(obj[key])
    return str(obj)


def _error_message(res: httpx.Response) -> str:
    try:
        return _message_of(res.json())
    except (json.JSONDecodeError, ValueError):
        return res.text


def _sse_data(chunks: Iterator[bytes]) -> Iterator[str]:
    """The `data:` payloads of a Server-Sent Events byte stream (UTF-8 decoded per whole line)."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            line = line.rstrip(b"\r")
            if line.startswith(b"data:"):
                yield line[5:].strip().decode("utf-8")
    if buf.startswith(b"data:"):
        yield buf[5:].strip().decode("utf-8")
