"""Rotary position embedding (neox / rotate-half style, as HF Llama and Qwen) from a cos/sin cache.
Supports the ``default``, ``linear`` and ``llama3`` rope types."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn


def rope_params(hf_config) -> tuple[float, Optional[dict]]:
    """(rope_theta, scaling dict) from either transformers-4 (rope_theta/rope_scaling) or
    transformers-5 (rope_parameters) configs."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    scaling = getattr(hf_config, "rope_scaling", None) or (params if params.get("rope_type") else None)
    if scaling and scaling.get("rope_type", scaling.get("type")) in (None, "default"):
        scaling = None
    return float(theta), scaling


def _inv_freq(dim: int, base: float, scaling: Optional[dict]) -> torch.Tensor:
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    raise ValueError(f"unsupported rope scaling type {kind!r}; supported: default, linear, llama3")


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_position: int, base: float, scaling: Optional[dict] = None):
        super().__init__()
        self.head_dim = head_dim
        inv_freq = _inv_freq(head_dim, base, scaling)
        t = torch.arange(max_position, dtype=torch.int64).float()
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cache", emb.cos(), persistent=False)
        self.register_buffer("sin_cache", emb.sin(), persistent=False)

    def prepare(self, positions: torch.Tensor, dtype: torch.dtype) -> "RopeForBatch":
        """Per-forward rotary state shared by all layers (cos/sin gathered once on CPU; on CUDA the
        fused Triton kernel reads the caches directly, which CUDA graphs can capture)."""
        if positions.is_cuda:
            return RopeForBatch(positions, self.cos_cache, self.sin_cache, None, None)
        cos = self.cos_cache[positions].unsqueeze(1).to(dtype)
        sin = self.sin_cache[positions].unsqueeze(1).to(dtype)
        return RopeForBatch(positions, self.cos_cache, self.sin_cache, cos, sin)


class RopeForBatch:
    """Applies the rotation for one forward's positions: q [T, Hq, D], k [T, Hkv, D] -> rotated."""

    __slots__ = ("positions", "cos_cache", "sin_cache", "cos", "sin")

    def __init__(self, positions, cos_cache, sin_cache, cos, sin):
        self.positions, self.cos_cache, self.sin_cache, self.cos, self.sin = positions, cos_cache, sin_cache, cos, sin

    @property
    def in_place(self) -> bool:
        """True on CUDA, where ``rotate_heads_`` rotates heads in place with one kernel."""
        return self.cos is None

    def rotate_heads_(self, x: torch.Tensor) -> None:
        """Rotate every head of x [T, H, D] (a view; last dim contiguous) in place."""
        from sgl_jupyter.kernels.rope import rope_inplace

        rope_inplace(x, self.positions, self.cos_cache, self.sin_cache)

    def apply(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cos is None:  # CUDA: one fused kernel per tensor, in place on the qkv projection's views
            from sgl_jupyter.kernels.rope import apply_rope_triton

            return apply_rope_triton(q, k, self.positions, self.cos_cache, self.sin_cache, inplace=True)
        # HF's exact op order (q*cos + rotate_half(q)*sin) so CPU greedy output equals HF token for token
        x1, x2 = q.chunk(2, dim=-1)
        y1, y2 = k.chunk(2, dim=-1)
        return (q * self.cos + torch.cat((-x2, x1), dim=-1) * self.sin,
                k * self.cos + torch.cat((-y2, y1), dim=-1) * self.sin)
