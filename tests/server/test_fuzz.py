"""Schemathesis against /openapi.json: generated valid and invalid requests for every operation. No
answer may be a 5xx, answers match the documented schemas, the server stays up, and afterwards the KV
pool is back to full.

Generation lengths are capped (max_tokens/max_new_tokens <= 4, n <= 2) so the fuzzer spends its time
on the request-handling layer, not on decoding thousands of tokens on two CPU cores."""
from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import assert_kv_back_to_full

MAX_TOKENS = 4
# SGL_FUZZ_EXAMPLES=200 for a deeper, randomised hunt; the default is a quick, reproducible pass.
EXAMPLES = int(os.environ.get("SGL_FUZZ_EXAMPLES", "15"))
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(scope="session")
def api_schema(url):
    return schemathesis.openapi.from_url(url + "/openapi.json")


def _cap(params: dict, key: str, default_missing: bool) -> None:
    value = params.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        params[key] = min(value, MAX_TOKENS)
    elif default_missing and value is None:
        params[key] = MAX_TOKENS


def cap_generation(case) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    if case.path == "/generate":
        sp = body.get("sampling_params")
        for p in sp if isinstance(sp, list) else [sp] if isinstance(sp, dict) else []:
            if isinstance(p, dict):
                _cap(p, "max_new_tokens", default_missing=True)
                if isinstance(p.get("n"), int):
                    p["n"] = min(p["n"], 2)
        if sp is None:
            body["sampling_params"] = {"max_new_tokens": MAX_TOKENS}
    else:
        _cap(body, "max_tokens", default_missing=True)
        _cap(body, "max_completion_tokens", default_missing=False)
        if isinstance(body.get("n"), int) and not isinstance(body.get("n"), bool):
            body["n"] = min(body["n"], 2)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize="SGL_FUZZ_EXAMPLES" not in os.environ,
          suppress_health_check=list(HealthCheck))
def test_generated_requests_never_get_a_5xx(case):
    cap_generation(case)
    # No 5xx; 200 bodies match the documented models; status codes and content types are documented.
    response = case.call_and_validate(timeout=120, checks=CHECKS)
    content_type = response.headers.get("content-type") or [""]  # schemathesis: header -> list of values
    if response.status_code >= 400 and content_type[0].startswith("application/json"):
        err = response.json()["error"]
        assert err["message"] and err["code"] == response.status_code


def test_after_fuzzing_the_server_is_alive_and_no_slot_leaked(client, engine):
    assert client.get("/health").status_code == 200
    assert client.get("/health_generate").status_code == 200
    assert_kv_back_to_full(engine, client)
    res = client.post("/generate", json={"text": "The capital of France is",
                                         "sampling_params": {"max_new_tokens": 6, "temperature": 0}})
    assert res.json()["text"] == engine.generate("The capital of France is",
                                                 {"max_new_tokens": 6, "temperature": 0})["text"]
