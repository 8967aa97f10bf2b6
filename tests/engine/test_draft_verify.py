"""Batched draft verification follows jump_forward.verify_drafts' rule: greedy verdicts are identical,
sampled ones accept a draft with probability q(draft) and replace a rejected one by a draw from q without
it (checked by frequency over many seeds); seeded rows verify the same way whatever the batch."""
from __future__ import annotations

import torch

from sgl_jupyter.engine.constrained import allocate_token_bitmask
from sgl_jupyter.engine.draft_verify import DraftJob, verify_batch
from sgl_jupyter.engine.jump_forward import verify_drafts
from sgl_jupyter.engine.sampling import SamplingParams, SamplingRow

V = 16


def _job(first: int, drafts: list[int], params: SamplingParams, seed: int = 0) -> DraftJob:
    rows = [SamplingRow(params, [1, 2, 3], drafts[:j], (), None, seed) for j in range(len(drafts) + 1)]
    return DraftJob(first, drafts, allocate_token_bitmask(len(drafts) + 1, V), rows)


def test_greedy_verdicts_equal_verify_drafts():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, V, generator=g)
    greedy = SamplingParams(temperature=0.0)
    top = logits.argmax(-1).tolist()
    jobs = [_job(0, [top[0], (top[1] + 1) % V], greedy), _job(3, [top[3], top[4], top[5]], greedy)]
    got = verify_batch(logits, jobs)
    for job, res in zip(jobs, got):
        n = len(job.drafts)
        ref = verify_drafts(logits[job.first:job.first + n + 1].clone(), job.drafts, job.masks, job.rows)
        assert res == ref
    assert got == [(1, top[1]), (3, top[6])]


def test_sampled_verdicts_follow_q_and_the_residual():
    logits = torch.tensor([[2.0, 1.0, 0.5] + [-1.0] * (V - 3), [0.0] * V])
    params = SamplingParams(temperature=1.0)
    q = torch.softmax(logits[0], -1)
    draft = 1
    n = 4000
    res = verify_batch(logits.repeat(n, 1), [_job(2 * i, [draft], params, seed=i) for i in range(n)])
    accepted = sum(1 for a, _ in res if a == 1)
    p = float(q[draft])
    assert abs(accepted / n - p) < 4 * (p * (1 - p) / n) ** 0.5
    rejected = [t for a, t in res if a == 0]
    assert draft not in rejected
    resid = q.clone()
    resid[draft] = 0
    resid /= resid.sum()
    top_share = rejected.count(0) / len(rejected)
    assert abs(top_share - float(resid[0])) < 4 * (float(resid[0]) * (1 - float(resid[0])) / len(rejected)) ** 0.5


def test_seeded_rows_verify_the_same_in_any_batch():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, V, generator=g)
    params = SamplingParams(temperature=0.9, top_p=0.9)
    alone = verify_batch(logits[3:6], [_job(0, [2, 5], params, seed=42)])
    together = verify_batch(logits, [_job(0, [1, 4], params, seed=7), _job(3, [2, 5], params, seed=42)])
    assert together[1] == alone[0]
