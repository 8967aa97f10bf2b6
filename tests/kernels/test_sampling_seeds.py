"""The device sampler driven by per-position step seeds, as the engine drives it (eager steps and
multi-step graphs alike): the same seed draws the same token, a row's draw does not depend on the other
rows of the batch, and draws over many step seeds follow the distribution."""
from __future__ import annotations

import torch

from sgl_jupyter.engine.sampling import step_seed, step_seeds
from sgl_jupyter.kernels.sampling import sample_triton


def _params(n: int, device: str, top_p: float = 1.0):
    return (torch.full((n,), 1.0, device=device), torch.full((n,), -1, dtype=torch.int64, device=device),
            torch.full((n,), top_p, device=device), torch.zeros(n, device=device))


def test_step_seeds_match_the_host_formula():
    seeds = torch.tensor([0, 5, 2**31 - 1])
    pos = torch.tensor([0, 17, 4095])
    assert step_seeds(seeds, pos).tolist() == [step_seed(s, p) for s, p in zip(seeds.tolist(), pos.tolist())]
    assert step_seed(2**40 + 5, 17) == step_seed(5, 17)  # request seeds are taken modulo 2**31


def test_seeded_draws_repeat_and_ignore_the_rest_of_the_batch(interp_device):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 40, generator=g).to(interp_device)
    seeds = step_seeds(torch.arange(6, dtype=torch.int64) * 31 + 7, torch.full((6,), 300)).to(interp_device)
    batch = sample_triton(logits, *_params(6, interp_device, 0.9), seeds)
    assert torch.equal(batch, sample_triton(logits, *_params(6, interp_device, 0.9), seeds))
    alone = sample_triton(logits[4:5], *_params(1, interp_device, 0.9), seeds[4:5])
    assert int(alone[0]) == int(batch[4])


def test_draws_over_step_seeds_follow_the_distribution(interp_device):
    n, v = 256, 8
    logits = torch.tensor([[1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0]], device=interp_device).repeat(n, 1)
    seeds = step_seeds(torch.full((n,), 12345, dtype=torch.int64), torch.arange(n, dtype=torch.int64))
    toks = sample_triton(logits, *_params(n, interp_device), seeds.to(interp_device)).cpu()
    freq = torch.bincount(toks, minlength=v).float() / n
    probs = torch.softmax(logits[0].cpu(), -1)
    assert torch.all((freq - probs).abs() < 4 * (probs * (1 - probs) / n).sqrt() + 1e-3), (freq, probs)
