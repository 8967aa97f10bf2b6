"""RMSNorm with an optional fused residual add, rounded as HF Llama does (float32 norm). The math
lives in ``sgl_jupyter.kernels.rmsnorm``: one Triton kernel on CUDA, the torch reference elsewhere."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from sgl_jupyter.kernels.gemv import AddRMSNorm
from sgl_jupyter.kernels.rmsnorm import fused_add_rmsnorm, rmsnorm


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        """Without residual: norm(x). With residual: (norm(x + residual), x + residual)."""
        if residual is None:
            return rmsnorm(x, self.weight, self.eps)
        return fused_add_rmsnorm(x, residual, self.weight, self.eps)

    def prologue(self, residual: torch.Tensor) -> AddRMSNorm:
        """This norm of ``x + residual`` as the next projection's prologue (``layers.linear.project``); the
        sum is ``.residual_out`` after that projection ran."""
        return AddRMSNorm(residual, self.weight, self.eps)
