"""GPU memory over a long life and at its limits: 10,000 requests leave GPU memory and the KV pool as they
found them; running out of memory at load (weights, KV cache, CUDA graphs) raises KVCacheOOMError naming
the knob to turn, and leaves nothing behind. Skipped without a GPU (run `make gpu-test`)."""
from __future__ import annotations

import gc
import json
import random

import pytest
import torch

from tests.conftest import assert_no_leak

pytestmark = pytest.mark.gpu

WAVES, PER_WAVE = 20, 500  # 10,000 requests (the waves are ~300; they go on until that many)


def _settle() -> int:
    gc.collect()
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def test_10k_requests_leave_gpu_memory_and_kv_as_they_were(model_path):
    """Waves of ~300 requests each, every kind the scheduler treats differently: greedy ones (multi-step
    overlapped launches) and, every other wave, sampled ones among them (single steps), stop strings,
    logprobs, lengths 1..16 (requests leave mid-launch), n=2. After the first waves have made every one-time
    allocation, live GPU memory is what it was, and every KV slot and request row is free or cached."""
    from sgl_jupyter import Engine

    rng = random.Random(0)
    words = ["alpha", "beta", "上海", "gamma", "delta", "🙂", "epsilon", "zeta"]

    def wave(w: int) -> int:
        prompts = [f"Wave {w} request {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(2, 30)))
                   for i in range(PER_WAVE // 2)]
        params = []
        for i in range(len(prompts)):
            sampled = w % 2 == 1 and i % 3 == 0  # even waves all greedy: overlapped multi-step launches
            p = {"max_new_tokens": rng.randint(1, 16), "temperature": 0.8 if sampled else 0.0,
                 "ignore_eos": i % 2 == 0}
            if i % 7 == 0:
                p["stop"] = [" the", "."]
            if i % 5 == 0:
                p["n"] = 2
            params.append(p)
        logprobs = [w % 2 == 1 and i % 11 == 0 for i in range(len(prompts))]  # (logprobs need single steps too)
        outs = eng.generate(prompts, params, return_logprob=logprobs)
        assert sum(1 for o in outs if o["meta_info"]["finish_reason"]["type"] in ("length", "stop")) == len(outs)
        return len(outs)

    eng = Engine(model_path, device="cuda", dtype="bfloat16", attention_backend="triton", max_running_requests=512)
    try:
        done, w = 0, 0
        while done < PER_WAVE:  # the first wave: graphs replayed, allocator pools filled
            done += wave(w)
            w += 1
        base = _settle()
        while done < WAVES * PER_WAVE:
            done += wave(w)
            w += 1
        after = _settle()
        assert after - base <= 2**20, f"{(after - base) / 2**20:.1f} MiB more live GPU memory after {done} requests"
        assert eng.scheduler.num_finished >= WAVES * PER_WAVE
        assert eng.scheduler.overlapped_launches > 0
        assert_no_leak(eng)
        assert torch.equal(eng.req_pool.host, eng.req_pool.table.cpu())
    finally:
        eng.shutdown()


def _shape_dir(tmp_path, **overrides) -> str:
    """The shipped Llama-3-8B config, with ``overrides``, in its own directory."""
    from pathlib import Path

    from sgl_jupyter.bench.latency import resolve_model_path

    cfg = json.loads((Path(resolve_model_path("llama3-8b")) / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **overrides}))
    return str(tmp_path)


@pytest.mark.parametrize("case", ["weights", "kv_cache", "graphs"])
def test_oom_at_load_names_the_knob_and_frees_the_gpu(model_path, tmp_path, case):
    """weights: an 8B shape with 400 layers (~200 GB) does not fit; kv_cache: --mem-fraction-static 0.05
    leaves no room for a KV cache after 16 GB of weights; graphs: --mem-fraction-static 0.9999 gives the KV
    cache everything, so capturing the decode graphs (or the cache itself) runs out."""
    from sgl_jupyter import Engine
    from sgl_jupyter.engine.errors import KVCacheOOMError

    base = _settle()
    if case == "weights":
        kwargs = dict(model_path=_shape_dir(tmp_path, num_hidden_layers=400), load_format="dummy")
        knob = "smaller model"
    elif case == "kv_cache":
        kwargs = dict(model_path=_shape_dir(tmp_path), load_format="dummy", mem_fraction_static=0.05)
        knob = "--mem-fraction-static"
    else:
        kwargs = dict(model_path=model_path, dtype="bfloat16", mem_fraction_static=0.9999)
        knob = "--mem-fraction-static"
    message = None
    try:
        Engine(device="cuda", tokenizer_path=model_path, **kwargs).shutdown()
    except KVCacheOOMError as e:
        message = str(e)
    assert message is not None, f"{case}: the engine loaded"
    assert knob in message, message
    torch.cuda.empty_cache()
    assert _settle() - base <= 64 * 2**20, "the failed load left GPU memory allocated"
