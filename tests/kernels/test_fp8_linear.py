"""``quantization="fp8"`` on the linear layers: its refusal off FP8 GPUs, quantizing dense weights at load,
the per-batch-size dispatch (reference on CPU), and loading checkpoints that are already FP8 (per-tensor and
per-channel ``weight_scale``, ``ignored_layers``), on a tiny two-layer Llama written here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sgl_jupyter.engine.errors import ModelLoadError
from sgl_jupyter.engine.loader import iter_safetensors, load_hf_config, load_model
from sgl_jupyter.engine.models.registry import resolve_model_class
from sgl_jupyter.engine.quantization import get_method, linear_layers
from sgl_jupyter.engine.quantization.fp8 import Fp8LinearMethod, prepare_checkpoint
from sgl_jupyter.kernels import fp8 as k

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 96,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_hidden_layers": 2,
        "vocab_size": 128, "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
        "hidden_act": "silu", "torch_dtype": "float32"}
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _dense_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, f = TINY["hidden_size"], TINY["intermediate_size"]
    shapes = {"q_proj": (64, h), "k_proj": (32, h), "v_proj": (32, h), "o_proj": (h, 64), "gate_proj": (f, h),
              "up_proj": (f, h), "down_proj": (h, f)}
    sd = {"model.embed_tokens.weight": torch.randn(TINY["vocab_size"], h, generator=g),
          "model.norm.weight": torch.ones(h)}
    for i in range(TINY["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = torch.ones(h)
        sd[p + "post_attention_layernorm.weight"] = torch.ones(h)
        for name, shape in shapes.items():
            sd[p + ("self_attn." if name[0] in "qkvo" else "mlp.") + name + ".weight"] = \
                torch.randn(*shape, generator=g) * 0.1 * (1 + torch.arange(shape[0])[:, None] % 5)
    return sd


def _write(tmp: Path, sd: dict, quantization_config: dict | None = None) -> Path:
    cfg = dict(TINY, **({"quantization_config": quantization_config} if quantization_config else {}))
    (tmp / "config.json").write_text(json.dumps(cfg))
    save_file({n: t.contiguous() for n, t in sd.items()}, str(tmp / "model.safetensors"))
    return tmp


def _fp8_checkpoint(sd: dict, per_channel: bool, ignored: tuple[str, ...] = (), static: bool = False) -> dict:
    """What an FP8 exporter writes: e4m3 weights and a scale per tensor (or per output channel), and with
    static activation scales an ``input_scale`` per layer."""
    out = {}
    for name, t in sd.items():
        layer = name.removesuffix(".weight")
        if name.endswith("_proj.weight") and layer.removeprefix("model.") not in ignored:
            s = t.abs().amax(1) / k.FP8_MAX if per_channel else t.abs().amax().reshape(1) / k.FP8_MAX
            q = (t / (s[:, None] if per_channel else s)).to(k.FP8_DTYPE)
            out[name], out[layer + ".weight_scale"] = q, (s[:, None] if per_channel else s.reshape(()))
            if static:
                out[layer + ".input_scale"] = torch.tensor(0.02)
        else:
            out[name] = t
    return out


def _model_from(path: Path):
    cfg = load_hf_config(path)
    model = resolve_model_class(cfg.architectures)(cfg)
    return cfg, model


def test_fp8_refuses_cpu_with_the_fix():
    with pytest.raises(ValueError, match="NVIDIA GPU with FP8.*on CPU load the model dense"):
        get_method("fp8").check(torch.device("cpu"), Path("."))


def test_dense_weights_quantized_at_load_and_dispatched_by_rows(tmp_path):
    cfg, model = _model_from(_write(tmp_path, _dense_state()))
    model.load_weights(iter_safetensors([tmp_path / "model.safetensors"]))
    dense = {n: m.weight.detach().clone() for n, m in linear_layers(model)}
    method = Fp8LinearMethod()
    x = torch.randn(5, TINY["hidden_size"])
    before = model.layers[0].mlp.gate_up_proj(x)
    for n, layer in linear_layers(model):
        layer.quant_method = method
        method.process_weights_after_loading(layer)
        assert layer.weight.dtype == k.FP8_DTYPE and layer.weight_scale.shape == (dense[n].shape[0],)
        back = k.dequantize_weight(layer.weight, layer.weight_scale, torch.float32)
        assert ((back - dense[n]).abs() <= dense[n].abs() / 16 + dense[n].abs().amax(1, keepdim=True) / 2**9).all()
    after = model.layers[0].mlp.gate_up_proj(x)  # CPU: the dequantized reference
    assert after.shape == before.shape and 0 < (after - before).norm() / before.norm() < 0.05


def test_reference_rounds_activations_per_token_from_the_threshold():
    layer = torch.nn.Module()
    layer.weight, layer.weight_scale = k.quantize_weight(torch.randn(24, 40))
    method, x = Fp8LinearMethod(), torch.randn(6, 40) * torch.logspace(-2, 2, 6)[:, None]
    w = k.dequantize_weight(layer.weight, layer.weight_scale, torch.float32)
    assert torch.equal(method.apply(layer, x, None), x @ w.t())  # fewer rows: activations as they are
    method.act_quant_min_tokens = 6
    xq, xs = k.quantize_rows_ref(x)
    y = method.apply(layer, x, None)
    assert torch.equal(y, (xq.float() * xs) @ w.t()) and not torch.equal(y, x @ w.t())


@pytest.mark.parametrize("per_channel", [False, True])
def test_fp8_checkpoint_loads_its_bytes_and_scales(tmp_path, per_channel):
    sd = _dense_state(1)
    ckpt = _fp8_checkpoint(sd, per_channel, ignored=("layers.1.mlp.down_proj",), static=True)
    qc = {"quant_method": "fp8", "activation_scheme": "static", "ignored_layers": ["model.layers.1.mlp.down_proj"]}
    cfg, model = _model_from(_write(tmp_path, ckpt, qc))
    assert prepare_checkpoint(model, cfg)
    loaded = model.load_weights(iter_safetensors([tmp_path / "model.safetensors"]))
    assert {n for n, _ in model.named_parameters()} <= loaded  # every parameter came from the checkpoint
    method = Fp8LinearMethod()
    for _, layer in linear_layers(model):
        method.process_weights_after_loading(layer)
    qkv = model.get_submodule("layers.0.self_attn.qkv_proj")
    for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
        offset, length, _ = qkv.parts[part]
        hf = f"model.layers.0.self_attn.{name}"
        assert torch.equal(qkv.weight[offset:offset + length].float(), ckpt[hf + ".weight"].float())
        want = ckpt[hf + ".weight_scale"].float().reshape(-1).expand(length)
        assert torch.equal(qkv.weight_scale[offset:offset + length], want)
    # the layer the checkpoint kept dense was quantized here, from its dense weight
    down = model.get_submodule("layers.1.mlp.down_proj")
    dense = sd["model.layers.1.mlp.down_proj.weight"]
    assert down.weight.dtype == k.FP8_DTYPE
    assert (k.dequantize_weight(down.weight, down.weight_scale, torch.float32) - dense).abs().max() < dense.abs().max() / 16


def test_block_wise_fp8_checkpoint_is_refused_with_the_reason(tmp_path):
    qc = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    path = _write(tmp_path, _fp8_checkpoint(_dense_state(), True), qc)
    with pytest.raises(ModelLoadError, match="block-wise FP8"):
        load_model(str(path), device="cpu", with_tokenizer=False)


def test_fp8_checkpoint_on_cpu_names_the_gpu_requirement(tmp_path):
    path = _write(tmp_path, _fp8_checkpoint(_dense_state(), False), {"quant_method": "fp8"})
    with pytest.raises(ModelLoadError, match="quantization='fp8'.*NVIDIA GPU"):
        load_model(str(path), device="cpu", with_tokenizer=False)
    with pytest.raises(ModelLoadError, match="holds FP8 weights"):
        load_model(str(path), device="cpu", with_tokenizer=False, quantization="gguf_is_not_fp8")
