"""``kv_cache_dtype="fp8_e4m3"`` on the embedded model (CPU, torch attention backend): greedy output close to
the dense engine's, four times the fp32 (twice the bf16) tokens in the same KV budget, the layer's own scales
used, the prefix cache and slot bookkeeping unchanged, and clear errors for bad settings."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from sgl_jupyter.engine.errors import InvalidRequestError
from tests.conftest import assert_no_leak

PROMPTS = ["Once upon a time", "Translate to French: good morning", "The largest planet in the solar system is",
           "import numpy as np\n", "The capital of France is", "Write a haiku about the sea.", "def fibonacci(n):",
           "List three primary colors:", "中文问题:你好吗?", "Explain gravity to a child in one sentence.",
           "1, 2, 3, 4, 5,", "The quick brown fox"]
GREEDY8 = {"max_new_tokens": 8, "temperature": 0}
KV_BUDGET_GB = 0.02  # a small pool: 1864 fp8 tokens of SmolLM2, 466 fp32 ones
SYSTEM = "You are a meticulous assistant. " * 20


@pytest.fixture(scope="module")
def fp8_engine(model_path):
    from sgl_jupyter import Engine

    eng = Engine(model_path, device="cpu", kv_cache_dtype="fp8_e4m3", cpu_kv_budget_gb=KV_BUDGET_GB)
    yield eng
    eng.shutdown()


def _same_first_tokens(dense, fp8) -> int:
    """Prompts whose first 8 greedy tokens are identical on both engines."""
    a = [r["output_ids"] for r in dense.generate(PROMPTS, GREEDY8)]
    b = [r["output_ids"] for r in fp8.generate(PROMPTS, GREEDY8)]
    return sum(x == y for x, y in zip(a, b))


def test_fp8_pool_holds_four_times_the_fp32_tokens_in_the_same_budget(engine, fp8_engine):
    from sgl_jupyter.engine.config import EngineArgs
    from sgl_jupyter.engine.rank_setup import kv_capacity

    pool = fp8_engine.kv_pool
    assert pool.dtype == torch.float8_e4m3fn and pool.is_fp8
    assert all(b.dtype == torch.float8_e4m3fn for b in pool.k_buffers + pool.v_buffers)
    dense_bytes = engine.kv_pool.bytes_per_token()  # the shared engine: float32 on CPU
    assert pool.bytes_per_token() * 4 == dense_bytes
    fp32_tokens = kv_capacity(EngineArgs(cpu_kv_budget_gb=KV_BUDGET_GB), engine.loaded)
    bf16_tokens = kv_capacity(EngineArgs(cpu_kv_budget_gb=KV_BUDGET_GB),
                              dataclasses.replace(engine.loaded, dtype=torch.bfloat16))
    assert pool.size == fp8_engine.get_server_info()["max_total_num_tokens"]
    assert abs(pool.size - 4 * fp32_tokens) <= 4 and abs(pool.size - 2 * bf16_tokens) <= 2
    allocated = sum(b.numel() * b.element_size() for b in pool.k_buffers + pool.v_buffers)
    assert allocated <= KV_BUDGET_GB * 2**30 + 2 * dense_bytes  # the same bytes (+ the scratch slot)


def test_greedy_output_agrees_with_the_dense_engine(engine, fp8_engine):
    """Measured 10 of 12 on the embedded model; reading another layer's cache gives 2 of 12."""
    assert _same_first_tokens(engine, fp8_engine) >= 8
    assert_no_leak(fp8_engine)


def test_each_layer_reads_with_its_own_scales(engine, fp8_engine):
    """Scales as a calibrated checkpoint would give them, different per layer: 9 of 12 prompts agree; a read
    that drops the scales (or takes another layer's) gives 0 of 12."""
    pool = fp8_engine.kv_pool
    saved = list(pool.k_scales), list(pool.v_scales)
    try:
        for i in range(pool.num_layers):
            pool.k_scales[i] = 0.5 if i % 2 else 2.0
            pool.v_scales[i] = 0.25 if i % 3 else 1.5
        fp8_engine.flush_cache()  # cached slots hold values stored with the old scales
        assert _same_first_tokens(engine, fp8_engine) >= 7
    finally:
        pool.k_scales[:], pool.v_scales[:] = saved
        fp8_engine.flush_cache()
    assert_no_leak(fp8_engine)


def test_prefix_cache_reuses_fp8_slots(fp8_engine):
    fp8_engine.flush_cache()
    fp8_engine.generate(SYSTEM + "Question: what is red?", GREEDY8)
    hit = fp8_engine.generate(SYSTEM + "Question: what is blue?", GREEDY8)
    assert hit["meta_info"]["cached_tokens"] > 100
    fp8_engine.flush_cache()
    cold = fp8_engine.generate(SYSTEM + "Question: what is blue?", GREEDY8)
    assert cold["meta_info"]["cached_tokens"] == 0
    assert hit["output_ids"] == cold["output_ids"]  # the reused slots hold the same e4m3 bytes
    assert_no_leak(fp8_engine)


def test_unknown_kv_cache_dtype_is_a_clear_error():
    from sgl_jupyter import Engine

    with pytest.raises(InvalidRequestError, match=r"kv_cache_dtype must be one of \('auto', 'fp8_e4m3'\)"):
        Engine(device="cpu", kv_cache_dtype="fp8")
    with pytest.raises(InvalidRequestError, match="not 'flashinfer'"):
        Engine(device="cpu", kv_cache_dtype="fp8_e4m3", attention_backend="flashinfer")


def test_flag_on_launch_server_and_sgl_load():
    from sgl_jupyter.jupyter.engine_flags import parse_engine_flags
    from sgl_jupyter.server.args import build_parser

    ns = build_parser().parse_args(["--kv-cache-dtype", "fp8_e4m3"])
    assert ns.kv_cache_dtype == "fp8_e4m3"
    assert build_parser().parse_args([]).kv_cache_dtype == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--kv-cache-dtype", "int4"])
    _, kwargs, _ = parse_engine_flags(["--kv-cache-dtype", "fp8_e4m3", "--max-total-tokens", "64"])
    assert kwargs["kv_cache_dtype"] == "fp8_e4m3"


def test_auto_backend_choice_for_fp8_kv(monkeypatch):
    """On a CUDA machine with FlashInfer, auto picks FlashInfer for a bf16 cache and Triton for an fp8 one
    (the backend list is what a GPU host reports; the choice itself is plain logic)."""
    from sgl_jupyter.engine import attention

    assert attention.choose_backend_name("auto", torch.device("cpu"), kv_fp8=True) == "torch"
    monkeypatch.setattr(attention, "available_backends", lambda device: ["torch", "triton", "flashinfer"])
    cuda = torch.device("cuda")
    assert attention.choose_backend_name("auto", cuda, dtype=torch.bfloat16) == "flashinfer"
    assert attention.choose_backend_name("auto", cuda, dtype=torch.bfloat16, kv_fp8=True) == "triton"
    with pytest.raises(ValueError, match="not flashinfer"):
        attention.choose_backend_name("flashinfer", cuda, dtype=torch.bfloat16, kv_fp8=True)


def test_gguf_model_with_fp8_kv_decodes_through_torch(model_path):
    """The fused GGUF CPU decode step writes an fp32 cache itself: with fp8 KV it stays off and the eager torch
    path (packed linears, fp8 pool) decodes; greedy text starts as the fp32-cache GGUF engine's does."""
    from sgl_jupyter import Engine

    outs = []
    for kv in ("fp8_e4m3", "auto"):
        eng = Engine(model_path, device="cpu", quantization="gguf", kv_cache_dtype=kv, max_total_tokens=1024)
        try:
            assert (eng.runner.cpu_decode is None) == (kv == "fp8_e4m3")
            outs.append([r["output_ids"][:3] for r in eng.generate(PROMPTS[:4], GREEDY8)])
            assert_no_leak(eng)
        finally:
            eng.shutdown()
    assert sum(a == b for a, b in zip(*outs)) >= 3


def test_http_server_streams_chinese_from_the_fp8_engine(fp8_engine):
    """The real server on loopback over the fp8 engine: SSE deltas concatenate to the engine's own text
    (UTF-8 safe), /get_server_info reports the flag, and every slot comes back."""
    import json

    import httpx

    from sgl_jupyter.server import ServerThread

    prompt = "中文问题:你好吗?请用中文回答。"
    want = fp8_engine.generate(prompt, {"max_new_tokens": 12, "temperature": 0})["text"]
    srv = ServerThread(fp8_engine, host="127.0.0.1", port=0, log_level="warning").start()
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            info = c.get("/get_server_info").json()
            assert info["args"]["kv_cache_dtype"] == "fp8_e4m3"
            body = {"model": "x", "prompt": prompt, "max_tokens": 12, "temperature": 0, "stream": True}
            text = ""
            with c.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        text += "".join(ch["text"] for ch in json.loads(line[6:])["choices"])
            assert text == want and "\ufffd" not in text
    finally:
        srv.stop()
    assert_no_leak(fp8_engine)


def test_launch_server_rejects_a_bad_kv_cache_dtype():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "sgl_jupyter.launch_server", "--kv-cache-dtype", "fp8_e5m2"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "--kv-cache-dtype" in res.stderr and "fp8_e4m3" in res.stderr
