"""Batched sampling with per-row temperature, top-k, top-p and min-p; greedy rows take the argmax.

The three filters each keep "every token at least as likely as some threshold", so together they
keep ``p >= max(thresholds)``. The kernel never finds those thresholds: it draws from the whole row
(Gumbel-max) in the pass that also finds the max and the softmax sum, checks the draw against the filters
in a second pass, and on rejection draws again from above the rejected token (FlashInfer's pivot idea):
two passes over the row in the common case, where a threshold search takes ~20. One program per row;
nothing leaves the device (CUDA-graph capturable).
"""
from __future__ import annotations

from typing import Optional

import torch

from ._triton import HAS_TRITON, jit, next_pow2, require_triton, tl, triton, use_triton

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


if HAS_TRITON:
    @triton.jit
    def _gumbel_max_block(x, idx, offs, off, seed, best, tok, x_tok):
        """One block of a Gumbel-max draw over ``x`` (-inf: not drawable): the running best score, its token
        and that token's logit."""
        score = x - tl.log(-tl.log(tl.rand(seed, idx)))
        cs = tl.max(score, 0)
        ci = tl.argmax(score, 0)
        won = cs > best
        x_won = tl.sum(tl.where(offs == ci, x, 0.0), 0)
        return tl.where(won, cs, best), tl.where(won, ci + off, tok), tl.where(won, x_won, x_tok)


@jit
def _sample_kernel(Logits, Temps, TopK, TopP, MinP, Seeds, Out, Rounds, stride_l, V,
                   GREEDY_T: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = Logits + row * stride_l
    temp = tl.load(Temps + row).to(tl.float32)
    top_k = tl.load(TopK + row).to(tl.int32)
    top_p = tl.load(TopP + row).to(tl.float32)
    min_p = tl.load(MinP + row).to(tl.float32)
    seed = tl.load(Seeds + row)
    greedy = (temp <= GREEDY_T) | (top_k == 1)
    inv_t = tl.where(greedy, 1.0, 1.0 / tl.where(greedy, 1.0, temp))
    offs = tl.arange(0, BLOCK)
    zero_i = top_k * 0  # loop-carried scalars start as tensors of the right type
    zero_f = temp * 0.0
    neg_inf = zero_f + float("-inf")

    # pass 1: the max and its index (the greedy token), the softmax denominator (online: rescaled when
    # the max grows) and round 1's Gumbel-max draw over every token (argmax(x + g) needs neither)
    m = neg_inf
    z = zero_f
    arg = zero_i
    best = neg_inf
    tok = zero_i
    x_tok = neg_inf
    for off in range(0, V, BLOCK):
        idx = off + offs
        x = tl.load(base + idx, mask=idx < V, other=float("-inf")).to(tl.float32) * inv_t
        cm = tl.max(x, 0)
        better = cm > m
        arg = tl.where(better, tl.argmax(x, 0) + off, arg)
        m_new = tl.maximum(m, cm)
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # a fully masked block: no inf - inf
        z = z * tl.exp(m - m_ref) + tl.sum(tl.exp(x - m_ref), 0)
        m = m_new
        best, tok, x_tok = _gumbel_max_block(x, idx, offs, off, seed, best, tok, x_tok)

    # Rejection with a rising pivot (exact): a draw from p restricted to {x > pivot} is kept when it passes
    # every filter -- fewer than top_k tokens above it, less than top_p of the mass above it, p >= min_p *
    # p_max. Each filter keeps "every token at least as likely as some threshold", so a rejected draw is
    # below every kept token: it becomes the pivot and the next round draws from above it. Kept draws are
    # distributed as p renormalised over the kept set; the top token always passes, so the loop ends. A
    # top_p of 0.95 on a flat distribution accepts round 1 about 95% of the time: two passes over the row
    # in all, where a threshold search takes ~20.
    use_k = (top_k > 0) & (top_k < V)
    use_p = top_p < 1.0
    x_min = tl.where(min_p > 0, m + tl.log(tl.where(min_p > 0, min_p, 1.0)), float("-inf"))
    pending = (use_k | use_p | (min_p > 0)) & (~greedy)
    rounds = zero_i + 1
    pivot = neg_inf
    z_t = z * top_p
    while pending:
        # check the draw: tokens strictly above it, by count and by mass
        cnt = zero_i
        mass = zero_f
        n_chk = tl.where(use_k | use_p, V, 0)
        for off in range(0, n_chk, BLOCK):
            idx = off + offs
            x = tl.load(base + idx, mask=idx < V, other=float("-inf")).to(tl.float32) * inv_t
            above = x > x_tok
            cnt += tl.sum(above.to(tl.int32), 0)
            mass += tl.sum(tl.where(above, tl.exp(x - m), 0.0), 0)
        ok = ((~use_k) | (cnt < top_k)) & ((~use_p) | (mass < z_t)) & (x_tok >= x_min)
        pending = ~ok
        if pending:  # draw again from above the rejected token
            pivot = x_tok
            rounds += 1
            rseed = seed + rounds.to(tl.int64) * 1000003
            best = neg_inf
            for off in range(0, V, BLOCK):
                idx = off + offs
                x = tl.load(base + idx, mask=idx < V, other=float("-inf")).to(tl.float32) * inv_t
                x = tl.where(x > pivot, x, float("-inf"))
                best, tok, x_tok = _gumbel_max_block(x, idx, offs, off, rseed, best, tok, x_tok)
    tok = tl.where(greedy, arg, tok)
    tl.store(Out + row, tok.to(tl.int64))
    tl.store(Rounds + row, tl.where(greedy, 0, rounds))


def sample_triton(logits: torch.Tensor, temperatures: torch.Tensor, top_ks: torch.Tensor, top_ps: torch.Tensor,
                  min_ps: torch.Tensor, seeds: torch.Tensor, return_rounds: bool = False):
    """logits [B, V] (last dim contiguous), per-row params [B]; ``seeds`` [B] int64 must change every
    step (e.g. ``torch.randint`` on the device). -> ids [B] int64 (and each row's number of draws: 0 for
    greedy rows, 1 when the first draw was kept)."""
    require_triton()
    B, V = logits.shape
    assert logits.stride(-1) == 1
    out = torch.empty(B, dtype=torch.int64, device=logits.device)
    rounds = torch.empty(B, dtype=torch.int32, device=logits.device)
    if B:
        _sample_kernel[(B,)](logits, temperatures, top_ks, top_ps, min_ps, seeds, out, rounds, logits.stride(0), V,
                             GREEDY_T=GREEDY_TEMPERATURE, BLOCK=min(4096, next_pow2(V)), num_warps=8)
    return (out, rounds) if return_rounds else out


def sample(logits, temperatures, top_ks, top_ps, min_ps, seeds: Optional[torch.Tensor] = None,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Triton on CUDA (seeds drawn from ``generator`` when not given), torch.multinomial elsewhere."""
    if use_triton(logits):
        if seeds is None:
            seeds = torch.randint(0, 2**62, (logits.shape[0],), device=logits.device, generator=generator)
        return sample_triton(logits, temperatures, top_ks, top_ps, min_ps, seeds)
    return sample_ref(logits, temperatures, top_ks, top_ps, min_ps, generator)
