"""`RuntimeEndpoint` / `Runtime(endpoint=...)` against a real server on 127.0.0.1.

The module starts `python -m sgl_jupyter.launch_server` on a free port (skipped until that module
exists). Set SGL_LANG_TEST_SERVER=http://host:port to use a running server instead (ours, or a real
SGLang server serving the same embedded model: the parity tests compare with the in-process engine).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest

import sgl_jupyter.lang as sgl

API_KEY = "sgl-test-key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, proc, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            res = httpx.get(url + "/get_model_info", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=2)
            if res.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the server at {url} did not come up in {timeout:.0f}s")


@pytest.fixture(scope="module")
def server(model_path):
    """(url, api_key) of a server serving the embedded model."""
    external = os.environ.get("SGL_LANG_TEST_SERVER")
    if external:
        yield external.rstrip("/"), os.environ.get("SGL_LANG_TEST_API_KEY")
        return
    if importlib.util.find_spec("sgl_jupyter.launch_server") is None:
        pytest.skip("sgl_jupyter.launch_server does not exist yet (the HTTP server room)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sgl_jupyter.launch_server", "--model-path", model_path, "--host", "127.0.0.1",
         "--port", str(port), "--api-key", API_KEY, "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    try:
        _wait_ready(url, proc)
    except Exception:
        proc.kill()
        output = proc.communicate()[0].decode("utf-8", "replace")[-3000:]
        raise RuntimeError(f"could not start the server:\n{output}")
    yield url, API_KEY
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def endpoint(server):
    url, key = server
    backend = sgl.RuntimeEndpoint(url, api_key=key)
    yield backend
    backend.shutdown()


# ---------------------------------------------------------------------------------------------- the seed
def test_seed_programs_against_the_server(server, capsys):
    url, key = server
    from .test_seed_programs import SEED_PROGRAM_SEED

    rt = sgl.Runtime(endpoint=url, api_key=key, sampling_defaults={"seed": SEED_PROGRAM_SEED})

    # ---- from the seed (section 4.1) ----
    json_schema = r'{"name": "[^"]+", "age": \d+}'

    def get_user_info():
        return (
            sgl.user("请根据以下信息生成用户资料:张三,28岁")
            + sgl.assistant(sgl.gen(regex=json_schema))
        )

    state = rt.run(get_user_info)
    print(state.text)
    answer = state.messages()[-1]["content"]
    assert re.fullmatch(json_schema, answer), answer
    assert isinstance(json.loads(answer)["age"], int)

    # ---- from the seed (section 4.3) ----
    @sgl.function
    def weather_agent(s):
        intent = s + "请判断用户意图,只回答【查天气】或【其他】:" + sgl.gen(max_tokens=10)
        if "查天气" in intent:
            weather_data = "晴,26°C,东南风3级"
            s += f"\n天气API返回:{weather_data}"
        s += "\n请用自然语言总结以上信息:" + sgl.gen(max_tokens=64)
        return s

    result = rt.run(weather_agent, s="上海今天天气如何?")
    print(result.text)
    assert result.text().startswith("上海今天天气如何?请判断用户意图")
    assert "\n天气API返回:晴,26°C,东南风3级\n请用自然语言总结以上信息:" in result.text()
    assert capsys.readouterr().out == state.text() + "\n" + result.text() + "\n"


# ---------------------------------------------------------------------------------------------- parity
@sgl.function
def few_shot_and_chat(s, question):
    s += sgl.system("Answer briefly.")
    s += sgl.user("Q: What is the capital of France?")
    s += sgl.assistant("Paris")
    s += sgl.user("Q: " + question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=8, stop="\n"))
    s += sgl.user("Is that right?")
    s += sgl.assistant(sgl.select("verdict", ["Yes", "No"]))


def test_programs_give_the_same_result_over_http_and_in_process(endpoint, engine):
    over_http = few_shot_and_chat.run(question="What is the capital of Italy?", temperature=0, backend=endpoint)
    in_process = few_shot_and_chat.run(question="What is the capital of Italy?", temperature=0, backend=engine)
    assert over_http.text() == in_process.text()
    assert over_http.messages() == in_process.messages()
    http_scores = over_http.get_meta_info("verdict")["normalized_prompt_logprobs"]
    local_scores = in_process.get_meta_info("verdict")["normalized_prompt_logprobs"]
    assert http_scores == pytest.approx(local_scores, abs=1e-3)


def test_streaming_over_sse(endpoint):
    @sgl.function
    def qa(s):
        s += sgl.user("请用一句话介绍长城。")
        s += sgl.assistant(sgl.gen("answer", max_tokens=12))

    expected = qa.run(temperature=0, backend=endpoint)
    state = qa.run(temperature=0, backend=endpoint, stream=True)
    chunks = list(state.text_iter("answer"))
    assert len(chunks) > 1 and "".join(chunks) == expected["answer"]
    assert "\ufffd" not in expected["answer"]
    assert state.get_meta_info("answer")["completion_tokens"] == expected.get_meta_info("answer")["completion_tokens"]


def test_run_batch_over_http_shares_the_prefix(endpoint):
    @sgl.function
    def capital(s, country):
        s += "You answer with one word. " * 6 + "\n"
        s += "Q: What is the capital of " + country + "?\nA:" + sgl.gen("answer", stop="\n", max_tokens=4)

    states = capital.run_batch([{"country": c} for c in ["Japan", "Peru", "Chad"]], temperature=0, backend=endpoint)
    assert all(s.get_meta_info("answer")["cached_tokens"] > 20 for s in states)


def test_server_info_and_flush(endpoint):
    assert isinstance(sgl.get_server_info(endpoint), dict)
    assert sgl.flush_cache(endpoint) is True


# ---------------------------------------------------------------------------------------------- errors
def test_server_errors_carry_the_servers_message(endpoint):
    @sgl.function
    def bad(s):
        s += "Hi" + sgl.gen("x", max_tokens=2, return_logprob=True, logprob_start_len=10_000)

    with pytest.raises(sgl.RuntimeEndpointError) as info:
        bad.run(backend=endpoint)
    assert info.value.status_code in (400, 422)
    assert "logprob_start_len" in str(info.value)
    assert "logprob_start_len=10_000" in info.value.sgl_line


def test_wrong_api_key_is_refused(server):
    url, key = server
    if key is None:
        pytest.skip("the external server has no API key")
    with pytest.raises(sgl.RuntimeEndpointError) as info:
        sgl.RuntimeEndpoint(url, api_key="wrong-key")
    assert info.value.status_code == 401
