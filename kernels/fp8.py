"""FP8 (e4m3) linear kernels: weights stored as e4m3 with one fp32 scale per output row.

- ``quantize_weight``: the load-time step (dense -> e4m3 + per-row scale; torch ops, run once).
- ``w8a16_matmul``: a few rows of bf16 activations times e4m3 weights upcast in registers (Triton ``tl.dot``),
  for small decode batches: memory-bound like the one-row GEMV (``gemv.gemv_triton(..., scale=)``), so it
  reads half the bytes of bf16 and keeps the activations exact.
- ``quantize_rows`` + ``scaled_matmul``: many rows (prefill, large decode batches), where time is arithmetic:
  activations quantized per token to e4m3 and ``torch._scaled_mm`` runs the FP8 tensor cores (twice bf16's rate).
"""
from __future__ import annotations

from typing import Optional

import torch

from ._triton import jit, require_triton, tl, triton

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value
MIN_SCALE = 1e-12  # an all-zero row still gets a usable scale


def quantize_weight(weight: torch.Tensor, rows_per_chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense [N, K] -> (e4m3 [N, K], fp32 scale [N]) with ``weight ~= q * scale[:, None]``; chunked so an
    8B model's largest matrix never needs a full fp32 copy."""
    n = weight.shape[0]
    q = torch.empty(weight.shape, dtype=FP8_DTYPE, device=weight.device)
    scale = torch.empty(n, dtype=torch.float32, device=weight.device)
    for start in range(0, n, rows_per_chunk):
        w = weight[start:start + rows_per_chunk].float()
        s = (w.abs().amax(dim=1) / FP8_MAX).clamp_min(MIN_SCALE)
        q[start:start + rows_per_chunk] = (w / s[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        scale[start:start + rows_per_chunk] = s
    return q, scale


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale.float()[:, None]).to(dtype)


def quantize_rows_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (row) dynamic quantization: (e4m3 [M, K], fp32 scale [M, 1])."""
    s = (x.float().abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp_min(MIN_SCALE)
    return (x.float() / s).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), s


@jit
def _quantize_rows_kernel(X, Q, S, K, stride_x, stride_q, BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    x_row = X + row.to(tl.int64) * stride_x
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        amax = tl.maximum(amax, tl.abs(tl.load(x_row + rk, mask=rk < K, other=0.0).to(tl.float32)))
    scale = tl.maximum(tl.max(amax, 0) / 448.0, 1e-12)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_row + rk, mask=rk < K, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(x / scale, -448.0), 448.0)
        tl.store(Q + row.to(tl.int64) * stride_q + rk, q.to(Q.dtype.element_ty), mask=rk < K)
    tl.store(S + row, scale)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_rows_ref`` in one launch (one program per row, two passes over it)."""
    require_triton()
    assert x.dim() == 2 and x.stride(1) == 1
    m, k = x.shape
    q = torch.empty(m, k, dtype=FP8_DTYPE, device=x.device)
    s = torch.empty(m, 1, dtype=torch.float32, device=x.device)
    block_k = min(2048, triton.next_power_of_2(max(k, 16)))
    _quantize_rows_kernel[(m,)](x, q, s, k, x.stride(0), q.stride(0), BLOCK_K=block_k, num_warps=4)
    return q, s


@jit
def _w8a16_kernel(X, W, S, B, Y, M, N, K, stride_x, stride_w, stride_y, HAS_BIAS: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = rm < M, rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        # int32 offsets (a weight has < 2^31 elements): int64 ones cost two registers per tile element
        x = tl.load(X + rm[:, None] * stride_x + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(W + rn[:, None] * stride_w + rk[None, :], mask=n_ok[:, None] & k_ok[None, :],
                    other=0.0)  # [BLOCK_N, BLOCK_K]: each row's K run contiguous (coalesced)
        acc += tl.dot(x, tl.trans(w.to(x.dtype)))
    acc *= tl.load(S + rn, mask=n_ok, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(B + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rm[:, None].to(tl.int64) * stride_y + rn[None, :], acc.to(Y.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def w8a16_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 block_n: int = 64, block_k: int = 128) -> torch.Tensor:
    """x [M, K] (bf16/fp16; fp32 under the interpreter) @ (q [N, K] e4m3 * scale [N]).T (+ bias) -> [M, N]."""
    require_triton()
    assert x.dim() == 2 and x.stride(1) == 1 and q.stride(1) == 1 and x.shape[1] == q.shape[1]
    m, k = x.shape
    n = q.shape[0]
    # sm_90 ptxas (scripts/triton_sm90_check.py, with the launch's 16-divisibility marks): no spills at 16 or 32
    # rows x 64 x 128 on 4 warps (78 / 96 registers) nor 64 rows on 8 (56); the split at 32 rows is not timed yet
    block_m, warps = (16, 4) if m <= 32 else (64, 8)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _w8a16_kernel[grid](x, q, scale, bias if bias is not None else scale, y, m, n, k, x.stride(0), q.stride(0),
                        y.stride(0), HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                        num_warps=warps)
    return y


def scaled_mm_ok(n: int, k: int) -> bool:
    """``torch._scaled_mm`` wants K and N in multiples of 16."""
    return n % 16 == 0 and k % 16 == 0


def scaled_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-token e4m3 activations x per-row e4m3 weights on the FP8 tensor cores (rowwise scales, Hopper)."""
    xq, xs = quantize_rows(x.contiguous())
    y = torch._scaled_mm(xq, q.t(), scale_a=xs, scale_b=scale.view(1, -1), out_dtype=x.dtype)
    return y if bias is None else y + bias
