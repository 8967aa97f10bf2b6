"""The constrained-vs-free throughput benchmark, run small on the shared engine.

Wall-clock time on the shared 2-core CI machine swings by 2x between runs, so the assertion uses
process CPU time per pair of back-to-back runs (mean of 2 pairs) and is loose: measured ~1.0 with
jump-forward off and ~1.25 with it on; the acceptance bar is 0.9."""
from __future__ import annotations

from sgl_jupyter.bench.constrained import benchmark_constrained


def test_constrained_batch_keeps_up_with_the_free_batch(engine):
    df = benchmark_constrained(engine, batch_size=8, max_new_tokens=96, repeats=2, jump_forward=(False,),
                               verbose=False)
    assert set(df["mode"]) == {"constrained", "free"} and len(df) == 4
    constrained = df[df["mode"] == "constrained"]
    assert (constrained["valid_fraction"] == 1.0).all()
    # same batch shape: the free twin generates exactly as many tokens in as many steps
    assert set(df.groupby("mode")["completion_tokens"].first()) == {constrained["completion_tokens"].iloc[0]}
    assert df.attrs["cpu_ratio"][False] >= 0.8, df.to_string()
    assert engine.scheduler.enable_jump_forward  # the benchmark leaves the engine as it found it
