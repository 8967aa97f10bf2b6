from __future__ import annotations

import torch
from torch import nn

from sgl_jupyter.kernels.activation import silu_and_mul


class SiluAndMul(nn.Module):
    """silu(gate) * up for the fused [gate | up] projection (one Triton kernel on CUDA)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return silu_and_mul(x)
