"""--api-key: every route but /health needs `Authorization: Bearer`; the default bind is loopback."""
from __future__ import annotations

import inspect
import socket

import httpx
import openai
import pytest

from sgl_jupyter.server import ServerThread, serve_in_thread

from .conftest import API_KEY
from .test_cli import lan_address


@pytest.fixture(scope="module")
def keyed(engine):
    srv = serve_in_thread(engine, port=0, api_key=API_KEY)
    yield srv
    srv.stop()


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/v1/models", None), ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 1}),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    ("POST", "/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 1}}),
    ("GET", "/get_model_info", None), ("GET", "/get_server_info", None),
    ("POST", "/flush_cache", None), ("GET", "/metrics", None), ("GET", "/health_generate", None),
    ("GET", "/openapi.json", None), ("GET", "/no/such/route", None),
])
def test_every_route_but_health_needs_the_key(keyed, method, path, body):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"},
                    {"Authorization": API_KEY}):
        res = httpx.request(method, keyed.url + path, json=body, headers=headers, timeout=60)
        assert res.status_code == 401, (path, headers)
        assert res.json()["error"]["type"] == "authentication_error"
        assert res.headers["WWW-Authenticate"] == "Bearer"
    ok = httpx.request(method, keyed.url + path, json=body, headers={"Authorization": f"Bearer {API_KEY}"},
                       timeout=60)
    assert ok.status_code == (404 if path == "/no/such/route" else 200), ok.text[:300]


def test_health_is_open(keyed):
    assert httpx.get(keyed.url + "/health").status_code == 200


def test_openai_client_with_and_without_the_key(keyed):
    with openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    with openai.OpenAI(base_url=keyed.url + "/v1", api_key=API_KEY, max_retries=0) as good:
        assert good.completions.create(model="m", prompt="Hi", max_tokens=2).usage.completion_tokens >= 1


def test_default_bind_is_loopback(engine):
    assert inspect.signature(ServerThread).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(serve_in_thread).parameters["host"].default == "127.0.0.1"
    srv = serve_in_thread(engine, port=0)
    try:
        bound = {s.getsockname()[0] for server in srv.server.servers for s in server.sockets}
        assert bound == {"127.0.0.1"}
        assert httpx.get(srv.url + "/health").status_code == 200
        lan = lan_address()
        if lan is not None:  # from another interface the port is closed
            with pytest.raises(OSError):
                socket.create_connection((lan, srv.port), timeout=2).close()
    finally:
        srv.stop()


def test_all_interfaces_when_asked(engine):
    srv = serve_in_thread(engine, host="0.0.0.0", port=0)
    try:
        lan = lan_address()
        target = f"http://{lan}:{srv.port}" if lan else srv.url
        assert httpx.get(target + "/health", timeout=10).status_code == 200
    finally:
        srv.stop()
