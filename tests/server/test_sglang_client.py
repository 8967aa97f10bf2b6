"""SGLang's own frontend client (sglang 0.5.6 `RuntimeEndpoint`, unchanged) runs programs against our
server: gen, select (max_new_tokens=0 scoring), regex, streaming, run_batch, flush_cache, server info.

SGLang is not a dependency (it pulls a GPU stack). The client alone installs without its dependencies:

    pip install --no-deps --target DIR sglang==0.5.6 pybase64 aiohttp multidict yarl propcache \\
        aiohappyeyeballs aiosignal frozenlist
    SGL_SGLANG_CLIENT_PATH=DIR pytest tests/server/test_sglang_client.py

It runs in a subprocess so that the real `sglang` package never mixes with this process's modules."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CLIENT_PATH = os.environ.get("SGL_SGLANG_CLIENT_PATH", "")

PROGRAM = r'''
import json, re, sys
import sglang as sgl

backend = sgl.RuntimeEndpoint(sys.argv[1])
sgl.set_default_backend(backend)

@sgl.function
def qa(s, q):
    s += sgl.user(q)
    s += sgl.assistant(sgl.gen("a", max_tokens=8, temperature=0))
    s += sgl.user("Answer yes or no.")
    s += sgl.assistant(sgl.select("b", choices=["yes", "no"]))

@sgl.function
def profile(s):
    s += sgl.user("请根据以下信息生成用户资料:张三,28岁")
    s += sgl.assistant(sgl.gen("j", regex=r'\{"name": "[^"]{1,8}", "age": \d{1,3}\}', max_tokens=40, temperature=0))

state = qa.run(q="Is the sky blue?")
streamed = qa.run(q="Is the sky blue?", stream=True)
pieces = list(streamed.text_iter())
batch = qa.run_batch([{"q": "Is water wet?"}, {"q": "Is fire cold?"}])
prof = profile.run()
backend.flush_cache()
info = backend.get_server_info()
print(json.dumps({"a": state["a"], "b": state["b"], "stream_text": "".join(pieces), "text": state.text(),
                  "batch": [s["b"] for s in batch], "profile": prof["j"], "has_info": "kv" in info}))
'''


def _client_importable() -> bool:
    if not CLIENT_PATH:
        return False
    res = subprocess.run([sys.executable, "-c", "import sglang; from sglang import RuntimeEndpoint"],
                         env={**os.environ, "PYTHONPATH": CLIENT_PATH}, capture_output=True, timeout=120)
    return res.returncode == 0


@pytest.mark.skipif(not _client_importable(), reason="SGLang's client is not installed; see this module's "
                                                     "docstring (SGL_SGLANG_CLIENT_PATH)")
def test_sglang_runtime_endpoint_runs_programs_unchanged(url, client):
    res = subprocess.run([sys.executable, "-c", PROGRAM, url], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": CLIENT_PATH, "PYTHONUTF8": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["a"] and out["b"] in ("yes", "no")
    assert out["stream_text"] == out["text"]  # the whole-text SSE convention, sliced by SGLang's client
    assert all(b in ("yes", "no") for b in out["batch"]) and len(out["batch"]) == 2
    import re

    assert re.fullmatch(r'\{"name": "[^"]{1,8}", "age": \d{1,3}\}', out["profile"]), out["profile"]
    assert out["has_info"]
