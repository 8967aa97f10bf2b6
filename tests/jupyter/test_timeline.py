"""The engine's step history (engine/timeline.py), fed with given times: points every `interval` s while
busy, tokens/s from the token counter, a drop to 0 between busy runs, the idle end carrying current totals."""
from __future__ import annotations

import pytest

from sgl_jupyter.engine.timeline import EngineTimeline


def test_busy_runs_are_sampled_and_separated_by_idle_points():
    tl = EngineTimeline(interval=0.25, t0=100.0)
    for i in range(11):  # 10 tokens a step, a step every 0.05 s for 0.5 s
        tl.on_step(10 * (i + 1), running=2, queued=1, hit_rate=0.5, now=100.0 + 0.05 * i)
    pts = tl.points()
    assert [p["t"] for p in pts] == [0.0, 0.25, 0.5]
    assert pts[0]["tokens_per_s"] == 0.0 and pts[0]["generated"] == 10
    assert pts[1]["tokens_per_s"] == pytest.approx(200.0) and pts[2]["generated"] == 110
    tl.on_step(120, running=1, queued=0, hit_rate=0.6, now=105.0)  # after 4.5 s idle
    pts = tl.points()
    assert [(p["t"], p["tokens_per_s"], p["running"]) for p in pts[3:]] == \
           [(0.75, 0.0, 0), (4.999, 0.0, 0), (5.0, 0.0, 1)]  # at rest from 0.75 s until the step at 5 s
    assert [p["generated"] for p in pts[3:]] == [110, 110, 120]  # the idle points keep the old total


def test_close_idle_ends_the_run_with_the_totals_read_now():
    tl = EngineTimeline(interval=0.25, t0=0.0)
    assert tl.last() is None
    tl.on_step(5, 1, 0, 0.0, now=1.0)
    tl.on_step(8, 1, 0, 0.0, now=1.1)
    tl.close_idle(8, 0.25, now=1.2)  # not idle long enough: nothing
    assert len(tl) == 1
    tl.close_idle(8, 0.25, now=2.0)
    pts = tl.points()
    assert [(p["t"], p["tokens_per_s"], p["generated"], p["hit_rate"]) for p in pts] == \
           [(1.0, 0.0, 5, 0.0), (1.1, 30.0, 8, 0.25), (1.35, 0.0, 8, 0.25)]
    assert tl.last() == pts[-1]
    version = tl.version
    tl.close_idle(8, 0.25, now=3.0)  # already ended
    assert tl.version == version
    with pytest.raises(ValueError, match="interval"):
        EngineTimeline(interval=0)


def test_the_engine_keeps_its_timeline_without_subscribers(kernel_engine):
    assert not kernel_engine.bus.active  # no widget listens: no events are built, the timeline still grows
    before = kernel_engine.get_server_info()["generation_tokens_total"]
    out = kernel_engine.generate("Timeline test: one, two,", {"max_new_tokens": 6, "ignore_eos": True,
                                                               "temperature": 0})
    assert out["meta_info"]["completion_tokens"] == 6
    from sgl_jupyter.jupyter.feeds import timeline_points

    pts = timeline_points(kernel_engine, force_idle=True)
    assert pts[-1]["generated"] == before + 6 and pts[-1]["tokens_per_s"] == 0.0
    assert any(p["generated"] < before + 6 for p in pts)  # the run's start point came before its last tokens
