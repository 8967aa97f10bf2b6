"""Loading: clear errors for broken model directories; dummy weights; Qwen2/Qwen3 against HF."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from sgl_jupyter.engine.errors import InvalidRequestError, ModelLoadError
from sgl_jupyter.engine.loader import load_model


def test_missing_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))


def test_missing_config_json(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(str(tmp_path))


def test_unsupported_architecture_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="LlamaForCausalLM"):
        load_model(str(tmp_path))


def test_missing_weights_and_pickled_weights(tmp_path, model_path):
    shutil.copy(f"{model_path}/config.json", tmp_path / "config.json")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80")
    with pytest.raises(ModelLoadError, match="convert them to safetensors"):
        load_model(str(tmp_path))


def test_unknown_engine_argument_lists_valid_ones():
    from sgl_jupyter import Engine

    with pytest.raises(InvalidRequestError, match="max_total_tokens"):
        Engine(max_totl_tokens=5)


def test_max_num_sequences_alias():
    from sgl_jupyter.engine.config import EngineArgs

    assert EngineArgs.from_kwargs(max_num_sequences=32).max_running_requests == 32


def _tiny_hf_dir(tmp_path, model_path, arch: str):
    import transformers

    tok_files = ["tokenizer.json", "tokenizer_config.json"]
    common = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
    if arch == "qwen2":
        cfg = transformers.Qwen2Config(**common)
        cls = transformers.Qwen2ForCausalLM
    else:
        cfg = transformers.Qwen3Config(head_dim=16, **common)
        cls = transformers.Qwen3ForCausalLM
    torch.manual_seed(0)
    model = cls(cfg).eval()
    model.save_pretrained(str(tmp_path), safe_serialization=True)
    for f in tok_files:
        shutil.copy(f"{model_path}/{f}", tmp_path / f)
    return model


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_families_match_hf(tmp_path, model_path, arch):
    from sgl_jupyter import Engine

    hf = _tiny_hf_dir(tmp_path, model_path, arch)
    ids = [5, 17, 300, 42, 9, 1000, 77]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, min_new_tokens=10)[0, 7:].tolist()
    with Engine(str(tmp_path), device="cpu", max_total_tokens=512) as eng:
        out = eng.generate(input_ids=ids, sampling_params={"max_new_tokens": 10, "temperature": 0,
                                                           "ignore_eos": True})
    assert out["output_ids"] == ref


def test_dummy_weights_from_config_alone(tmp_path, model_path):
    from sgl_jupyter import Engine

    shutil.copy(f"{model_path}/config.json", tmp_path / "config.json")
    with Engine(str(tmp_path), load_format="dummy", device="cpu", max_total_tokens=256) as eng:
        out = eng.generate(input_ids=[1, 2, 3], sampling_params={"max_new_tokens": 4, "ignore_eos": True})
    assert len(out["output_ids"]) == 4


def test_graph_ladders_and_prefill_chunk_defaults():
    """Decode graphs every 8 rows up to 256, coarser above; multi-step graphs at powers of two up to 32 and
    every multiple of 32 (padding a large batch to the next one wastes a few percent of compute-bound
    rows); prefill chunks of 8192 tokens on CUDA, 2048 on CPU, unless set."""
    from sgl_jupyter.engine.config import EngineArgs
    from sgl_jupyter.engine.cuda_graph_runner import capture_batch_sizes, multi_step_batch_sizes

    ladder = capture_batch_sizes(512)
    assert ladder[:4] == [1, 2, 4, 8] and 256 in ladder and 264 not in ladder and 272 in ladder
    assert ladder[-1] == 512 and capture_batch_sizes(20)[-1] == 20
    ms = multi_step_batch_sizes(ladder, 512)
    assert ms == [1, 2, 4, 8, 16, 32] + list(range(64, 513, 32))
    assert multi_step_batch_sizes(capture_batch_sizes(20), 20) == [1, 2, 4, 8, 16, 20]
    assert EngineArgs().prefill_chunk("cuda") == 8192 and EngineArgs().prefill_chunk("cpu") == 2048
    assert EngineArgs(chunked_prefill_size=-1).prefill_chunk("cuda") == -1
