"""Server fixtures: one real uvicorn server on 127.0.0.1 (a free port) over the session's shared
engine (tests/conftest.py), plus helpers to check that no KV slot leaked."""
from __future__ import annotations

import socket
import time
from typing import Iterator

import httpx
import pytest

from sgl_jupyter.server import ServerThread

API_KEY = "sk-test-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def server(engine) -> Iterator[ServerThread]:
    """The shared server: no API key, no admission cap (the engine's defaults)."""
    srv = ServerThread(engine, host="127.0.0.1", port=0, log_level="warning").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def url(server) -> str:
    return server.url


@pytest.fixture(scope="session")
def client(url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=120) as c:
        yield c


def wait_idle(engine, timeout: float = 60.0) -> dict:
    """Server info once nothing is running or queued (aborts are processed between two steps)."""
    deadline = time.monotonic() + timeout
    while True:
        info = engine.get_server_info()
        if info["num_running_reqs"] == 0 and info["num_queue_reqs"] == 0:
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"the engine did not become idle in {timeout}s: {info['kv']}, "
                                 f"running={info['num_running_reqs']} queued={info['num_queue_reqs']}")
        time.sleep(0.05)


def assert_kv_back_to_full(engine, client: httpx.Client | None = None) -> None:
    """Every KV slot is free or held, unreferenced, by the prefix cache; every request row is free.
    Checked through /get_server_info when a client is given (what an operator sees), and in-process."""
    wait_idle(engine)
    deadline = time.monotonic() + 10
    while True:
        kv = (client.get("/get_server_info").json() if client is not None else engine.get_server_info())["kv"]
        rows_free = engine.req_pool.free_rows == engine.req_pool.max_reqs
        if kv["protected"] == 0 and kv["free"] + kv["evictable"] == kv["total"] and rows_free:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"KV slots leaked: {kv}, free request rows "
                                 f"{engine.req_pool.free_rows}/{engine.req_pool.max_reqs}")
        time.sleep(0.05)
