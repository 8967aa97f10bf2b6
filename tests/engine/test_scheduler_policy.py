"""Admission order and the decode-gap bound, on the real scheduler of the shared CPU engine."""
from __future__ import annotations


from sgl_jupyter.engine.prefix_cache import make_prefix_cache
from sgl_jupyter.engine.request import Req
from sgl_jupyter.engine.sampling import SamplingParams
from sgl_jupyter.engine.scheduler_policy import LPM_MAX_QUEUE, order_waiting


def _req(i: int, max_new: int, detok) -> Req:
    return Req(rid=str(i), prompt_ids=[5 + i, 6, 7], params=SamplingParams(max_new_tokens=max_new), sink=lambda c: None,
               detok=detok.new_state([5 + i, 6, 7], []))


def test_long_queues_admit_the_longest_outputs_first_short_queues_keep_arrival_order(engine):
    cache = make_prefix_cache(False, lambda slots: None)
    short = [_req(i, n, engine.detokenizer) for i, n in enumerate([5, 50, 20])]
    assert [r.rid for r in order_waiting(short, cache, "lpm")] == ["0", "1", "2"]  # no shared prefix: arrival
    many = [_req(i, (i * 37) % 101 + 1, engine.detokenizer) for i in range(LPM_MAX_QUEUE + 10)]
    ordered = order_waiting(many, cache, "lpm")
    lens = [r.remaining_new_tokens for r in ordered]
    assert lens == sorted(lens, reverse=True)
    assert [r.rid for r in order_waiting(many, cache, "fcfs")] == [r.rid for r in many]


def test_running_streams_get_a_decode_step_between_admitted_prefills(engine):
    """With a decode-gap bound, a burst of admissions no longer runs its prefills back to back while a
    running stream waits: the stream gets a token between any two of them (without the bound, prefills
    go first and the stream waits for several)."""
    sched = engine.scheduler
    events: list[str] = []

    def on_event(ev) -> None:
        if type(ev).__name__ == "StepEvent" and ev.mode == "extend":
            events.append("extend")
        elif type(ev).__name__ == "TokenEvent" and ev.rid == "gap-stream":
            events.append("token")

    def run(gap: float) -> list[str]:
        engine._call(lambda: setattr(sched.limits, "max_decode_gap_s", gap))
        engine._call(lambda: setattr(sched.limits, "chunked_prefill_size", 64))  # several prefill steps
        events.clear()
        unsubscribe = engine.subscribe(on_event)
        stream = engine.generate("A long story begins here:", {"max_new_tokens": 1000, "ignore_eos": True,
                                                               "temperature": 0}, stream=True, rid="gap-stream")
        try:
            next(stream)
            burst = [f"Run {gap}, request {i}: " + "tell me about the history of tea and trade routes. " * 6 for i in range(6)]
            engine.generate(burst, {"max_new_tokens": 2, "temperature": 0})
        finally:
            stream.close()  # aborts the stream
            unsubscribe()
        first = events.index("token")
        return events[first:]

    chunk, gap0 = sched.limits.chunked_prefill_size, sched.limits.max_decode_gap_s
    try:
        engine.flush_cache()
        bounded = run(1e-4)
        unbounded = run(0.0)
    finally:
        engine._call(lambda: setattr(sched.limits, "chunked_prefill_size", chunk))
        engine._call(lambda: setattr(sched.limits, "max_decode_gap_s", gap0))

    def longest_wait(seq: list[str]) -> int:
        """Most prefill steps between two of the stream's tokens."""
        best = cur = 0
        for e in seq:
            cur = cur + 1 if e == "extend" else 0
            best = max(best, cur)
        return best

    assert bounded.count("extend") >= 6 and longest_wait(bounded) == 1, " ".join(bounded)
    assert longest_wait(unbounded) > 1, unbounded
