"""Llama-family decoder (SmolLM2, Llama 2/3, Mistral) on packed tokens with a paged KV cache.
Qwen2 (qkv bias) and Qwen3 (q/k RMSNorm) are the same network with two switches."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from ..forward_batch import ForwardBatch
from ..layers.activation import SiluAndMul
from ..layers.attention import PagedAttention
from ..layers.rmsnorm import RMSNorm
from ..layers.rotary import RotaryEmbedding, rope_params


class DecoderAttention(nn.Module):
    def __init__(self, cfg, layer_id: int, qkv_bias: bool, qk_norm: bool):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.num_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        bias = qkv_bias or bool(getattr(cfg, "attention_bias", False))
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=bool(getattr(cfg, "attention_bias", False)))
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps) if qk_norm else None
        self.attn = PagedAttention(layer_id, self.num_heads, self.num_kv_heads, self.head_dim)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        T = x.shape[0]
        q = q.reshape(T, self.num_heads, self.head_dim)
        k = k.reshape(T, self.num_kv_heads, self.head_dim)
        v = v.reshape(T, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = RotaryEmbedding.apply(q, k, *fb.extra["rope"])
        return self.o_proj(self.attn(q, k, v, fb))


class DecoderMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        bias = bool(getattr(cfg, "mlp_bias", False))
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=bias)
        self.act = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg, layer_id: int, qkv_bias: bool, qk_norm: bool):
        super().__init__()
        self.self_attn = DecoderAttention(cfg, layer_id, qkv_bias, qk_norm)
        self.mlp = DecoderMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, positions, x, residual: Optional[torch.Tensor], fb: ForwardBatch):
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(positions, x, fb)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaForCausalLM(nn.Module):
    qkv_bias = False
    qk_norm = False

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, self.qkv_bias, self.qk_norm)
                                    for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        theta, scaling = rope_params(cfg)
        self.rotary = RotaryEmbedding(head_dim, getattr(cfg, "max_position_embeddings", 8192), theta, scaling)
        self.tie_word_embeddings = bool(getattr(cfg, "tie_word_embeddings", False))
        self.lm_head = None if self.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, fb: ForwardBatch) -> torch.Tensor:
        """Final hidden states of the rows in ``fb.logits_indices`` (normed), [R, hidden]."""
        x = self.embed_tokens(fb.input_ids)
        fb.extra["rope"] = self.rotary.cos_sin(fb.positions, x.dtype)
        residual = None
        for layer in self.layers:
            x, residual = layer(fb.positions, x, residual, fb)
        x = x[fb.logits_indices]
        residual = residual[fb.logits_indices]
        x, _ = self.norm(x, residual)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.matmul(hidden, self.lm_head_weight.t())

    # --- weights ----------------------------------------------------------------------------------
    _STACKED = {  # HF name fragment -> (our parameter, shard index)
        "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def _shard_offsets(self, fused: str, layer: DecoderLayer) -> list[int]:
        if fused == "qkv_proj":
            a = layer.self_attn
            return [0, a.q_size, a.q_size + a.kv_size, a.q_size + 2 * a.kv_size]
        inter = layer.mlp.down_proj.in_features
        return [0, inter, 2 * inter]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy HF-named tensors into our (fused) parameters; returns our parameter names loaded."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            name = name.removeprefix("model.")
            if name == "lm_head.weight" and self.lm_head is None:
                continue  # tied
            for frag, (fused, shard) in self._STACKED.items():
                if f".{frag}." in name:
                    target = name.replace(f".{frag}.", f".{fused}.")
                    layer = self.layers[int(name.split(".")[1])]
                    offs = self._shard_offsets(fused, layer)
                    params[target].data[offs[shard]:offs[shard + 1]].copy_(tensor)
                    loaded.add(target)
                    break
            else:
                if name not in params:
                    raise KeyError(f"unexpected weight {name!r} in checkpoint")
                params[name].data.copy_(tensor)
                loaded.add(name)
        return loaded
