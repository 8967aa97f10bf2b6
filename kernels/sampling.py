"""Batched sampling with per-row temperature, top-k, top-p and min-p; greedy rows take the argmax.

The three filters each keep "every token at least as likely as some threshold", so together they
keep ``p >= max(thresholds)``. The kernel finds the top-k and top-p thresholds without sorting: a
bisection over the float32 bit patterns of the probabilities (ordered like the values, since
they are >= 0), both searches sharing each pass over the row. Then one Gumbel-max pass draws the
token from the kept set. One program per row; nothing leaves the device (CUDA-graph capturable).
"""
from __future__ import annotations

from typing import Optional

import torch

from ._triton import jit, next_pow2, require_triton, tl, use_triton

GREEDY_TEMPERATURE = 1e-6  # temperatures at or below this are greedy (SGLang's convention: 0 = greedy)


def top_k_top_p_min_p_probs_ref(logits: torch.Tensor, temperatures: torch.Tensor, top_ks: torch.Tensor,
                                top_ps: torch.Tensor, min_ps: torch.Tensor) -> torch.Tensor:
    """The distribution the sampler draws from, [B, V] float32: softmax(logits / T), filtered per row
    (top_k <= 0 or >= V: off; top_p >= 1: off; min_p <= 0: off), renormalised; greedy rows one-hot."""
    logits = logits.float()
    greedy = (temperatures <= GREEDY_TEMPERATURE) | (top_ks == 1)
    t = torch.where(greedy, torch.ones_like(temperatures), temperatures).float()
    probs = torch.softmax(logits / t.unsqueeze(1), dim=-1)
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    V = probs.shape[-1]
    ranks = torch.arange(V, device=probs.device).unsqueeze(0)
    k = torch.where(top_ks > 0, top_ks, torch.full_like(top_ks, V)).unsqueeze(1)
    keep = ranks < k
    top_p = top_ps.float().unsqueeze(1)  # >= 1: off (a float cumsum can reach 1 before the tail)
    keep &= ((sorted_p.cumsum(-1) - sorted_p) < top_p) | (top_p >= 1.0)
    keep &= sorted_p >= min_ps.float().unsqueeze(1) * sorted_p[:, :1]
    keep[:, 0] = True
    out = torch.zeros_like(probs).scatter_(1, idx, sorted_p * keep)
    out = out / out.sum(-1, keepdim=True)
    onehot = torch.zeros_like(out).scatter_(1, logits.argmax(-1, keepdim=True), 1.0)
    return torch.where(greedy.unsqueeze(1), onehot, out)


def sample_ref(logits: torch.Tensor, temperatures: torch.Tensor, top_ks: torch.Tensor, top_ps: torch.Tensor,
               min_ps: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One token id per row (int64), drawn with torch.multinomial."""
    probs = top_k_top_p_min_p_probs_ref(logits, temperatures, top_ks, top_ps, min_ps)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@jit
def _sample_kernel(Logits, Temps, TopK, TopP, MinP, Seeds, Out, Thr, stride_l, V,
                   GREEDY_T: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = Logits + row * stride_l
    temp = tl.load(Temps + row).to(tl.float32)
    top_k = tl.load(TopK + row).to(tl.int32)
    top_p = tl.load(TopP + row).to(tl.float32)
    min_p = tl.load(MinP + row).to(tl.float32)
    greedy = (temp <= GREEDY_T) | (top_k == 1)
    inv_t = tl.where(greedy, 1.0, 1.0 / tl.where(greedy, 1.0, temp))
    offs = tl.arange(0, BLOCK)
    zero_i = top_k * 0  # loop-carried scalars start as tensors of the right type
    zero_f = temp * 0.0

    # pass 1: max of the scaled logits; its index is also the greedy token
    m = zero_f + float("-inf")
    arg = zero_i
    for off in range(0, V, BLOCK):
        x = tl.load(base + off + offs, mask=off + offs < V, other=float("-inf")).to(tl.float32) * inv_t
        cm = tl.max(x, 0)
        ci = tl.argmax(x, 0) + off
        better = cm > m
        arg = tl.where(better, ci, arg)
        m = tl.where(better, cm, m)

    n_pass = tl.where(greedy, 0, V)  # greedy rows skip the rest
    z = zero_f
    for off in range(0, n_pass, BLOCK):
        x = tl.load(base + off + offs, mask=off + offs < V, other=float("-inf")).to(tl.float32) * inv_t
        z += tl.sum(tl.exp(x - m), 0)
    inv_z = 1.0 / tl.where(greedy, 1.0, z)
    # The bisection's upper end must be above every p as the passes below compute it. 1/z is the top
    # token's p only in exact arithmetic: compiled, exp(x - m) of the top token can round above 1 (x*inv_t
    # contracted into an FMA in one pass and not in the other), and a top token alone holding more than
    # top_p then made the search end below it and keep the whole vocabulary. 2.0 is above any p.
    p_hi_bits = (zero_f + 2.0).to(tl.int32, bitcast=True)

    # top-k threshold: smallest t with count(p > t) < top_k; top-p: smallest t with mass(p > t) < top_p.
    # Bisect over bit patterns keeping pred(H) true and pred(L) false (L = -1: below every p), and stop
    # as soon as (L, H] holds one token: the threshold is then that token's p (found by one more pass).
    # Random rows stop after about log2(V) passes instead of 31.
    use_k = (top_k > 0) & (top_k < V) & (~greedy)
    use_p = (top_p < 1.0) & (~greedy)
    h_k = tl.where(use_k, p_hi_bits, zero_i)
    l_k = tl.where(use_k, zero_i - 1, h_k)
    h_p = tl.where(use_p, p_hi_bits, zero_i)
    l_p = tl.where(use_p, zero_i - 1, h_p)
    cl_k = zero_i + V  # tokens with p > L
    ch_k = zero_i  # tokens with p > H
    cl_p = zero_i + V
    ch_p = zero_i
    act_k = use_k
    act_p = use_p
    while act_k | act_p:
        mid_k = l_k + (h_k - l_k) // 2
        mid_p = l_p + (h_p - l_p) // 2
        t_k = mid_k.to(tl.float32, bitcast=True)
        t_p = mid_p.to(tl.float32, bitcast=True)
        cnt_k = zero_i
        cnt_p = zero_i
        mass = zero_f
        for off in range(0, V, BLOCK):
            x = tl.load(base + off + offs, mask=off + offs < V, other=float("-inf")).to(tl.float32) * inv_t
            p = tl.exp(x - m) * inv_z
            cnt_k += tl.sum((p > t_k).to(tl.int32), 0)
            above = p > t_p
            cnt_p += tl.sum(above.to(tl.int32), 0)
            mass += tl.sum(tl.where(above, p, 0.0), 0)
        ok_k = cnt_k < top_k
        ok_p = mass < top_p
        h_k = tl.where(act_k & ok_k, mid_k, h_k)
        ch_k = tl.where(act_k & ok_k, cnt_k, ch_k)
        l_k = tl.where(act_k & (~ok_k), mid_k, l_k)
        cl_k = tl.where(act_k & (~ok_k), cnt_k, cl_k)
        h_p = tl.where(act_p & ok_p, mid_p, h_p)
        ch_p = tl.where(act_p & ok_p, cnt_p, ch_p)
        l_p = tl.where(act_p & (~ok_p), mid_p, l_p)
        cl_p = tl.where(act_p & (~ok_p), cnt_p, cl_p)
        act_k = (h_k - l_k > 1) & (cl_k - ch_k > 1)
        act_p = (h_p - l_p > 1) & (cl_p - ch_p > 1)
    lo_k = tl.where(l_k < 0, -1.0, tl.maximum(l_k, 0).to(tl.float32, bitcast=True))
    hi_k = h_k.to(tl.float32, bitcast=True)
    lo_p = tl.where(l_p < 0, -1.0, tl.maximum(l_p, 0).to(tl.float32, bitcast=True))
    hi_p = h_p.to(tl.float32, bitcast=True)
    thr_k = zero_f
    thr_p = zero_f
    n_final = tl.where(use_k | use_p, V, 0)
    for off in range(0, n_final, BLOCK):
        x = tl.load(base + off + offs, mask=off + offs < V, other=float("-inf")).to(tl.float32) * inv_t
        p = tl.exp(x - m) * inv_z
        thr_k = tl.maximum(thr_k, tl.max(tl.where((p > lo_k) & (p <= hi_k), p, 0.0), 0))
        thr_p = tl.maximum(thr_p, tl.max(tl.where((p > lo_p) & (p <= hi_p), p, 0.0), 0))
    thr = tl.maximum(tl.where(use_k, thr_k, 0.0), tl.where(use_p, thr_p, 0.0))
    thr = tl.maximum(thr, tl.where(min_p > 0, min_p * inv_z, 0.0))

    # Gumbel-max over the kept tokens: argmax(log p + g) draws p renormalised over the kept set
    seed = tl.load(Seeds + row)
    best = zero_f + float("-inf")
    tok = arg
    for off in range(0, n_pass, BLOCK):
        idx = off + offs
        x = tl.load(base + idx, mask=idx < V, other=float("-inf")).to(tl.float32) * inv_t
        p = tl.exp(x - m) * inv_z
        u = tl.rand(seed, idx)
        score = tl.where((p >= thr) & (p > 0), x - tl.log(-tl.log(u)), float("-inf"))
        cm = tl.max(score, 0)
        ci = tl.argmax(score, 0) + off
        better = cm > best
        tok = tl.where(better, ci, tok)
        best = tl.where(better, cm, best)
    tl.store(Out + row, tok.to(tl.int64))
    tl.store(Thr + row, tl.where(greedy, 0.0, thr))


def sample_triton(logits: torch.Tensor, temperatures: torch.Tensor, top_ks: torch.Tensor, top_ps: torch.Tensor,
                  min_ps: torch.Tensor, seeds: torch.Tensor, return_threshold: bool = False):
    """logits [B, V] (last dim contiguous), per-row params [B]; ``seeds`` [B] int64 must change every
    step (e.g. ``torch.randint`` on the device). -> ids [B] int64 (and the kept-probability threshold)."""
    require_triton()
    B, V = logits.shape
    assert logits.stride(-1) == 1
    out = torch.empty(B, dtype=torch.int64, device=logits.device)
    thr = torch.empty(B, dtype=torch.float32, device=logits.device)
    if B:
        _sample_kernel[(B,)](logits, temperatures, top_ks, top_ps, min_ps, seeds, out, thr, logits.stride(0), V,
                             GREEDY_T=GREEDY_TEMPERATURE, BLOCK=min(4096, next_pow2(V)), num_warps=8)
    return (out, thr) if return_threshold else out


def sample(logits, temperatures, top_ks, top_ps, min_ps, seeds: Optional[torch.Tensor] = None,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Triton on CUDA (seeds drawn from ``generator`` when not given), torch.multinomial elsewhere."""
    if use_triton(logits):
        if seeds is None:
            seeds = torch.randint(0, 2**62, (logits.shape[0],), device=logits.device, generator=generator)
        return sample_triton(logits, temperatures, top_ks, top_ps, min_ps, seeds)
    return sample_ref(logits, temperatures, top_ks, top_ps, min_ps, generator)
