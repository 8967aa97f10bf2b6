"""Session-wide fixtures: one engine and one HF oracle per test session, on CPU."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


# Without CUDA the Triton kernels run through Triton's interpreter (tests/kernels). Triton fixes that choice
# for its own standard library (tl.max, tl.sum, ...) when it is first imported, and `import sgl_jupyter.engine`
# imports it, so the switch must be set here, before any test module is collected, not in tests/kernels.
if _no_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `make gpu-test` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def model_path() -> str:
    import os

    if os.environ.get("SGL_NO_EMBEDDED_MODEL"):  # set by scripts/gpu_run.sh when the GGUF was not carried
        pytest.skip("the embedded model is not on this machine")
    from sgl_jupyter import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def engine(model_path):
    """The shared engine: the embedded model on CPU, radix cache on."""
    from sgl_jupyter import Engine

    eng = Engine(model_path, device="cpu", max_total_tokens=32768)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="session")
def hf_model(model_path):
    """HF transformers on the same weights: the correctness oracle."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tokenizer(engine):
    return engine.tokenizer


def assert_no_leak(engine) -> None:
    """Every KV slot is free or held (unreferenced) by the prefix cache; no request row is taken."""
    import time

    for _ in range(100):
        info = engine.get_server_info()
        if info["num_running_reqs"] == 0 and info["num_queue_reqs"] == 0:
            break
        time.sleep(0.05)
    kv = info["kv"]
    assert kv["protected"] == 0, kv
    assert kv["free"] + kv["evictable"] == kv["total"], kv
    assert engine.req_pool.free_rows == engine.req_pool.max_reqs


def tokenizer_dir() -> str:
    """A tokenizer directory for a checkpoint that has none (GPU tests' tiny models): the carried ``.tok/`` that
    scripts/gpu_run.sh names in SGL_TOK, else the embedded model's; skip when neither is here."""
    if os.environ.get("SGL_TOK"):
        return os.environ["SGL_TOK"]
    from sgl_jupyter.engine.default_model import default_model_path

    try:
        return default_model_path()
    except Exception as e:  # noqa: BLE001 - reported in the skip
        pytest.skip(f"no tokenizer (set SGL_TOK or install the embedded model): {e}")


def write_peaked_tiny_llama(path, tokenizer_path: str, hidden: int, intermediate: int, max_positions: int) -> str:
    """A 2-layer Llama with SmolLM2's vocabulary and tokenizer whose attention is peaked (initializer_range 0.25:
    keys matter, so a k stored unrotated changes tokens while rounding-level differences cannot), seeded."""
    import shutil

    import torch
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=hidden, intermediate_size=intermediate,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=max_positions, tie_word_embeddings=False,
                                   initializer_range=0.25)
    torch.manual_seed(3)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(path), safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokenizer_path, name), os.path.join(str(path), name))
    return str(path)
