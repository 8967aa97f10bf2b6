"""Jump-forward drafts of a whole decode step verified at once, by the rule of
``jump_forward.verify_drafts`` (greedy: a draft stands iff it is the argmax; sampling: it stands with
probability q(draft), the first rejected one is replaced by a draw from q without it, and after the last
accepted draft a token is drawn from q), so the output distribution is the same. One pass of masks, bans
and sampling probabilities over every drafted row of the batch and two host transfers per step, instead of
several small kernels and host syncs per request: with hundreds of constrained requests those syncs were
most of the step. Uniforms come from the host, seeded by each row's ``step_seed``, so a seeded request
verifies the same way in any batch."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Union

import torch

from .constrained import apply_token_bitmask
from .sampling import SamplingRow, apply_penalties, ban_tokens, sampling_probs


@dataclass
class DraftJob:
    """One request's drafts: logits rows ``first .. first + len(drafts)`` of the step, the grammar masks
    before each draft and after the last, and the sampler's view of each position."""
    first: int
    drafts: list[int]
    masks: torch.Tensor
    rows: list[SamplingRow]


Result = Union[tuple[int, int], None]  # (drafts accepted, the token after them); None: verify it alone


def _uniforms(row: SamplingRow) -> tuple[float, float]:
    """Two uniforms for a position: the acceptance test and the draw."""
    rng = random.Random(row.step_seed)
    return rng.random(), rng.random()


def verify_batch(logits: torch.Tensor, jobs: list[DraftJob]) -> list[Result]:
    """Verify every job against the step's float32 ``logits`` (left unmodified: rows are copied). A job
    whose draw lands on a residual with no mass left (only through rounding) comes back None: the caller
    verifies it with ``verify_drafts``."""
    if not jobs:
        return []
    index = [job.first + j for job in jobs for j in range(len(job.drafts) + 1)]
    all_rows = [r for job in jobs for r in job.rows]
    lg = logits.index_select(0, torch.tensor(index, device=logits.device))
    if any(r.params.needs_penalties for r in all_rows):
        apply_penalties(lg, all_rows)
    apply_token_bitmask(lg, torch.cat([job.masks for job in jobs]), range(len(index)))
    ban_tokens(lg, all_rows)
    starts, s = [], 0
    for job in jobs:
        starts.append(s)
        s += len(job.drafts) + 1
    sampled = [i for i, job in enumerate(jobs) if not job.rows[0].params.is_greedy]
    best = lg.argmax(dim=-1)
    probs: Optional[torch.Tensor] = None
    p_draft: list[float] = []
    if sampled:
        s_index = [starts[i] + j for i in sampled for j in range(len(jobs[i].drafts) + 1)]
        s_rows = [jobs[i].rows[j] for i in sampled for j in range(len(jobs[i].drafts) + 1)]
        probs = sampling_probs(lg.index_select(0, torch.tensor(s_index, device=lg.device)), s_rows)
        d_index, d_tok, off = [], [], 0
        for i in sampled:
            n = len(jobs[i].drafts)
            d_index.extend(range(off, off + n))
            d_tok.extend(jobs[i].drafts)
            off += n + 1
        p_draft = probs[torch.tensor(d_index, device=probs.device),
                        torch.tensor(d_tok, device=probs.device)].tolist() if d_index else []
    best_l = best.tolist()
    results: list[Result] = [None] * len(jobs)
    draws: list[tuple[int, int, int, float]] = []  # (job, probs row, token left out or -1, uniform)
    pd_off, p_off = 0, 0
    sampled_set = set(sampled)
    for i, job in enumerate(jobs):
        n = len(job.drafts)
        if i not in sampled_set:
            row = best_l[starts[i]:starts[i] + n + 1]
            j = next((j for j, d in enumerate(job.drafts) if row[j] != d), n)
            results[i] = (j, row[j])
            continue
        accepted = n
        for j in range(n):
            if _uniforms(job.rows[j])[0] >= p_draft[pd_off + j]:
                accepted = j
                break
        u = _uniforms(job.rows[accepted])[1]
        draws.append((i, p_off + accepted, job.drafts[accepted] if accepted < n else -1, u))
        results[i] = (accepted, -1)
        pd_off += n
        p_off += n + 1
    if draws:
        q = probs.index_select(0, torch.tensor([d[1] for d in draws], device=probs.device))
        left_out = [(k, d[2]) for k, d in enumerate(draws) if d[2] >= 0]
        if left_out:
            q[torch.tensor([k for k, _ in left_out], device=q.device),
              torch.tensor([t for _, t in left_out], device=q.device)] = 0.0
        cum = q.cumsum(dim=-1)
        total = cum[:, -1]
        target = torch.tensor([d[3] for d in draws], device=q.device, dtype=cum.dtype) * total
        target = torch.minimum(target, torch.nextafter(total, torch.zeros_like(total)))  # below the last step
        tok = torch.searchsorted(cum, target.view(-1, 1), right=True).view(-1).clamp(max=q.shape[-1] - 1)
        tok_l, total_l = tok.tolist(), total.tolist()
        for (i, _, _, _), t, tot in zip(draws, tok_l, total_l):
            results[i] = (results[i][0], t) if tot > 0.0 else None
    return results
