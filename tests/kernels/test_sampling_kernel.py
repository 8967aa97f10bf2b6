"""Batched top-k / top-p / min-p sampling: the kernel's draws always fall in the sort-based reference's kept
set, greedy rows are the argmax, the drawn frequencies follow the reference distribution, and a flat row with
top_p near 1 keeps its first draw (two passes over the row, not a threshold search)."""
from __future__ import annotations

import pytest
import torch

from sgl_jupyter.kernels.sampling import sample_ref, sample_triton, top_k_top_p_min_p_probs_ref


def _params(rows: list[tuple[float, int, float, float]], device: str):
    t, k, p, m = zip(*rows)
    return (torch.tensor(t, device=device), torch.tensor(k, dtype=torch.int32, device=device),
            torch.tensor(p, device=device), torch.tensor(m, device=device))


ROWS = [  # temperature, top_k, top_p, min_p
    (0.0, -1, 1.0, 0.0),  # greedy
    (1.0, 20, 1.0, 0.0),
    (0.7, -1, 0.9, 0.0),
    (1.0, -1, 1.0, 0.05),
    (1.3, 50, 0.8, 0.1),
    (1.0, 1, 1.0, 0.0),  # top_k 1 is greedy too
    (0.5, 5, 0.5, 0.0),
    (1.0, -1, 1.0, 0.0),  # plain sampling: keeps everything
]


def test_reference_filters_compose_like_sglang():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    probs = torch.softmax(logits, -1)[0]
    one = lambda k, p, m: top_k_top_p_min_p_probs_ref(logits, *_params([(1.0, k, p, m)], "cpu"))[0]  # noqa
    assert (one(2, 1.0, 0.0) > 0).tolist() == [True, True, False, False, False]
    cum_before = probs.cumsum(0) - probs  # top-p keeps a token while the mass above it is < p
    assert (one(-1, 0.8, 0.0) > 0).tolist() == (cum_before < 0.8).tolist()
    assert (one(-1, 1.0, 0.3) > 0).tolist() == (probs >= 0.3 * probs[0]).tolist()
    torch.testing.assert_close(one(2, 1.0, 0.0).sum(), torch.tensor(1.0))
    g = torch.Generator().manual_seed(0)
    assert sample_ref(logits.repeat(50, 1), *_params([(0.0, -1, 1.0, 0.0)] * 50, "cpu"), generator=g).eq(0).all()


def test_kernel_draws_stay_in_the_kept_sets_and_greedy_rows_take_the_argmax(interp_device):
    g = torch.Generator().manual_seed(1)
    reps = 12
    logits = (torch.randn(len(ROWS), 300, generator=g) * 3).repeat(reps, 1).to(interp_device)
    params = _params(ROWS * reps, interp_device)
    seeds = torch.arange(len(ROWS) * reps, device=interp_device) * 7919 + 5
    ids, rounds = sample_triton(logits, *params, seeds, return_rounds=True)
    ref = top_k_top_p_min_p_probs_ref(logits, *params)
    for i, (t, k, p, m) in enumerate(ROWS * reps):
        if t == 0.0 or k == 1:
            assert ids[i] == logits[i].argmax() and rounds[i] == 0, i
        else:
            assert ref[i, ids[i]] > 0, (i, ROWS[i % len(ROWS)])
            assert rounds[i] >= 1
    # a filter that keeps little of the row needs more draws; plain sampling never a second one
    assert rounds[7::len(ROWS)].eq(1).all()
    assert rounds[6::len(ROWS)].float().mean() > 1
    # different seeds draw different tokens where many are kept
    assert len(set(ids[7::len(ROWS)].tolist())) > 3


def test_kernel_draw_frequencies_follow_the_reference_interpreted(interp_device):
    n, vocab = 1500, 12  # ~13 ms a row under the interpreter
    g = torch.Generator().manual_seed(3)
    base = torch.randn(1, vocab, generator=g) * 1.5
    for row in [(0.8, 6, 0.8, 0.02)]:  # every filter cuts: top_k 6, then top_p to 5 tokens, min_p
        params = _params([row] * n, interp_device)
        ids = sample_triton(base.expand(n, vocab).contiguous().to(interp_device), *params,
                            torch.arange(n, device=interp_device) * 31 + 1)
        emp = torch.bincount(ids.cpu(), minlength=vocab).double() / n
        ref = top_k_top_p_min_p_probs_ref(base, *_params([row], "cpu"))[0].double()
        bound = 4.5 * (ref * (1 - ref) / n).sqrt() + 2e-3
        assert ((emp - ref).abs() <= bound).all(), (row, emp, ref)
        assert (ref > 0).sum() < 6  # the row exercises more than top_k


@pytest.mark.gpu
@pytest.mark.parametrize("vocab", [1000, 32000, 151936])
def test_kernel_kept_sets_cuda(vocab):
    logits = torch.randn(len(ROWS) * 4, vocab, device="cuda") * 4
    params = _params(ROWS * 4, "cuda")
    seeds = torch.randint(0, 2**62, (len(ROWS) * 4,), device="cuda")
    ids, rounds = sample_triton(logits, *params, seeds, return_rounds=True)
    ref = top_k_top_p_min_p_probs_ref(logits, *params)
    greedy = (params[0] <= 1e-6) | (params[1] == 1)
    assert torch.equal(ids[greedy], logits[greedy].argmax(-1))
    assert (ref[~greedy].gather(1, ids[~greedy, None]) > 0).all()
    assert rounds[~greedy].min() >= 1 and rounds[greedy].eq(0).all()


@pytest.mark.gpu
@pytest.mark.parametrize("vocab,row", [(64, (0.8, 6, 0.9, 0.02)), (10000, (1.0, 40, 1.0, 0.0)),
                                       (10000, (0.9, -1, 0.7, 0.0)), (5000, (1.0, -1, 1.0, 0.03))])
def test_kernel_draws_follow_reference_distribution(vocab, row):
    n = 40000
    g = torch.Generator(device="cuda").manual_seed(vocab)
    logits = (torch.randn(1, vocab, device="cuda", generator=g) * 2).expand(n, vocab).contiguous()
    params = _params([row] * n, "cuda")
    seeds = torch.randint(0, 2**62, (n,), device="cuda", generator=g)
    ids = sample_triton(logits, *params, seeds)
    emp = torch.bincount(ids, minlength=vocab).double() / n
    ref = top_k_top_p_min_p_probs_ref(logits[:1], *[x[:1] for x in params])[0].double()
    bound = 5 * (ref * (1 - ref) / n).sqrt() + 2e-4
    assert ((emp - ref).abs() <= bound).all(), (emp - ref).abs().max()


@pytest.mark.gpu
def test_kernel_is_deterministic_per_seed_and_capturable():
    logits = torch.randn(4, 32000, device="cuda")
    params = _params([(1.0, 50, 0.9, 0.0)] * 4, "cuda")
    seeds = torch.tensor([1, 2, 3, 4], device="cuda")
    a, b = sample_triton(logits, *params, seeds), sample_triton(logits, *params, seeds)
    assert torch.equal(a, b)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = sample_triton(logits, *params, seeds)
    seeds.copy_(torch.tensor([5, 6, 7, 8]))
    graph.replay()
    assert torch.equal(out, sample_triton(logits, *params, seeds))


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
def test_top_p_row_whose_top_token_alone_exceeds_p_keeps_only_it(interp_device, temperature):
    """The regression behind the Triton sampler's one wrong row: a top token holding more than top_p
    alone (here about 0.9+ of the mass) must be the only token kept, at any temperature."""
    logits = torch.zeros(3, 1000)
    logits[:, 7] = 10.0 * temperature  # p(7) = e^10 / (e^10 + 999) ~ 0.957 after the temperature
    logits[:, 100:110] = torch.linspace(0, 1, 10)
    params = _params([(temperature, -1, 0.9, 0.0), (temperature, 50, 0.9, 0.0),
                      (temperature, -1, 0.95, 0.0)], "cpu")
    ref = top_k_top_p_min_p_probs_ref(logits, *params)
    logits, params = logits.to(interp_device), [p.to(interp_device) for p in params]
    seeds = torch.arange(3, device=interp_device) + 11
    for shift in range(4):
        ids = sample_triton(logits, *params, seeds + 100 * shift)
        assert (ref > 0).sum(1).tolist() == [1, 1, 1]
        assert ids.tolist() == [7, 7, 7]
