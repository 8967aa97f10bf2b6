"""Llama-family decoder (SmolLM2, Llama 2/3, Mistral) on packed tokens with a paged KV cache.
Qwen2 (qkv bias) and Qwen3 (q/k RMSNorm) are the same network with two switches.
Under tensor parallelism (``tp``) each rank holds its heads, its slice of the MLP and of the vocabulary."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from sgl_jupyter.kernels import fusions, store_kv
from sgl_jupyter.kernels.gemv import AddRMSNorm, SiluMul

from ..distributed.parallel_state import TPGroup
from ..forward_batch import ForwardBatch
from ..layers.attention import PagedAttention
from ..layers.linear import (MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear, WeightSource,
                             load_replicated)
from ..layers.rmsnorm import RMSNorm
from ..layers.rotary import RotaryEmbedding, rope_params
from ..layers.vocab_parallel import ParallelLMHead, VocabParallelEmbedding, vocab_parallel_logits


class DecoderAttention(nn.Module):
    def __init__(self, cfg, layer_id: int, qkv_bias: bool, qk_norm: bool, tp: TPGroup):
        super().__init__()
        total_heads = cfg.num_attention_heads
        total_kv_heads = getattr(cfg, "num_key_value_heads", None) or total_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // total_heads
        self.num_heads = total_heads // tp.size
        self.num_kv_heads = max(1, total_kv_heads // tp.size)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        bias = qkv_bias or bool(getattr(cfg, "attention_bias", False))
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, self.head_dim, total_heads, total_kv_heads, bias, tp)
        self.o_proj = RowParallelLinear(total_heads * self.head_dim, cfg.hidden_size,
                                        bool(getattr(cfg, "attention_bias", False)), tp)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps) if qk_norm else None
        self.attn = PagedAttention(layer_id, self.num_heads, self.num_kv_heads, self.head_dim)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, fb: ForwardBatch,
                prologue: Optional[AddRMSNorm] = None) -> torch.Tensor:
        qkv = self.qkv_proj(x, prologue)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        T = x.shape[0]
        q = q.reshape(T, self.num_heads, self.head_dim)
        k = k.reshape(T, self.num_kv_heads, self.head_dim)
        v = v.reshape(T, self.num_kv_heads, self.head_dim)
        rope = fb.extra["rope"]
        stored = False
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
            q, k = rope.apply(q, k)
        elif rope.in_place and fusions.ON:  # one kernel rotates q and k where they lie and stores k, v
            pool, layer = fb.extra["kv_pool"], self.attn.layer_id
            store_kv.rope_store_kv_triton(qkv, self.num_heads, self.num_kv_heads, rope.positions, rope.cos_cache,
                                          rope.sin_cache, pool.k_buffers[layer], pool.v_buffers[layer],
                                          fb.out_cache_loc, pool.k_scales[layer], pool.v_scales[layer])
            stored = True
        elif rope.in_place:  # q and k heads are adjacent in qkv: one kernel rotates both where they lie
            rope.rotate_heads_(qkv[:, :self.q_size + self.kv_size].view(T, -1, self.head_dim))
        else:
            q, k = rope.apply(q, k)
        return self.o_proj(self.attn(q, k, v, fb, stored))


class DecoderMLP(nn.Module):
    def __init__(self, cfg, tp: TPGroup):
        super().__init__()
        bias = bool(getattr(cfg, "mlp_bias", False))
        self.gate_up_proj = MergedColumnParallelLinear(cfg.hidden_size, [cfg.intermediate_size] * 2, bias, tp)
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, bias, tp)

    def forward(self, x: torch.Tensor, prologue: Optional[AddRMSNorm] = None) -> torch.Tensor:
        """down(silu(gate) * up): the activation rides down_proj's GEMV at one row (else its own kernel)."""
        return self.down_proj(self.gate_up_proj(x, prologue), SiluMul())


class DecoderLayer(nn.Module):
    def __init__(self, cfg, layer_id: int, qkv_bias: bool, qk_norm: bool, tp: TPGroup):
        super().__init__()
        self.self_attn = DecoderAttention(cfg, layer_id, qkv_bias, qk_norm, tp)
        self.mlp = DecoderMLP(cfg, tp)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, positions, x, residual: Optional[torch.Tensor], fb: ForwardBatch):
        """Each norm (with the residual add) is handed to the projection after it as a prologue: at one row it
        runs inside that GEMV, otherwise as the fused add + RMSNorm kernel before it."""
        if residual is None:
            residual, x = x, self.input_layernorm(x)
            x = self.self_attn(positions, x, fb)
        else:
            pre = self.input_layernorm.prologue(residual)
            x = self.self_attn(positions, x, fb, pre)
            residual = pre.residual_out
        post = self.post_attention_layernorm.prologue(residual)
        x = self.mlp(x, post)
        return x, post.residual_out


class LlamaForCausalLM(nn.Module):
    qkv_bias = False
    qk_norm = False

    def __init__(self, cfg, tp: Optional[TPGroup] = None):
        super().__init__()
        self.config = cfg
        self.tp = tp = tp or TPGroup()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, self.qkv_bias, self.qk_norm, tp)
                                    for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        theta, scaling = rope_params(cfg)
        self.rotary = RotaryEmbedding(head_dim, getattr(cfg, "max_position_embeddings", 8192), theta, scaling)
        self.tie_word_embeddings = bool(getattr(cfg, "tie_word_embeddings", False))
        self.lm_head = None if self.tie_word_embeddings else ParallelLMHead(cfg.vocab_size, cfg.hidden_size, tp)

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """This rank's rows of the output projection (all of them without tensor parallelism)."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, fb: ForwardBatch) -> torch.Tensor:
        """Final hidden states of the rows in ``fb.logits_indices`` (normed), [R, hidden]."""
        x = self.embed_tokens(fb.input_ids)
        fb.extra["rope"] = self.rotary.prepare(fb.positions, x.dtype)
        residual = None
        for layer in self.layers:
            x, residual = layer(fb.positions, x, residual, fb)
        if not fb.is_decode:  # decode asks for every row (logits_indices == arange): skip two gathers
            x = x[fb.logits_indices]
            residual = residual[fb.logits_indices]
        x, _ = self.norm(x, residual)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits (gathered from every rank under tensor parallelism)."""
        return vocab_parallel_logits(hidden, self.lm_head_weight, self.tp, self.config.vocab_size)

    # --- weights ----------------------------------------------------------------------------------
    _STACKED = {  # HF name fragment -> (our parameter, shard index)
        "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def load_weights(self, weights: Iterable[tuple[str, WeightSource]]) -> set[str]:
        """Copy HF-named tensors (or safetensors slices: only this rank's shard is read) into our
        (fused, sharded) parameters; returns our parameter names loaded."""
        loaded: set[str] = set()
        for name, src in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            name = name.removeprefix("model.")
            if name == "lm_head.weight" and self.lm_head is None:
                continue  # tied
            shard = None
            for frag, (fused, shard_id) in self._STACKED.items():
                if f".{frag}." in name:
                    name, shard = name.replace(f".{frag}.", f".{fused}."), shard_id
                    break
            self.load_parameter(name, src, shard)
            loaded.add(name)
        return loaded

    def load_parameter(self, name: str, src: WeightSource, shard_id: Optional[int] = None) -> None:
        """One parameter by our name; ``src`` is the full (single-GPU layout) tensor or one fused part."""
        owner_name, _, leaf = name.rpartition(".")
        try:
            owner = self.get_submodule(owner_name)
            param = getattr(owner, leaf)
        except AttributeError:
            raise KeyError(f"unexpected weight {name!r} in checkpoint") from None
        if not isinstance(param, nn.Parameter):
            raise KeyError(f"unexpected weight {name!r} in checkpoint")
        if hasattr(owner, "load_weight"):
            owner.load_weight(param, src, shard_id)
        else:
            load_replicated(param, src)
