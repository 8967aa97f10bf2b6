"""``bench sharegpt`` and ``bench serving --request-rates`` at tiny sizes on the shared CPU engine: the
workload follows its documented laws, the tables carry the fields the GPU runs report, and the online
run's streamed tokens all arrive through the real HTTP server."""
from __future__ import annotations

import math
import random
import statistics

from sgl_jupyter.bench.online import benchmark as online_benchmark
from sgl_jupyter.bench.sharegpt import LengthLaw, ShareGPTConfig, benchmark, sharegpt_workload


def test_length_laws_match_the_documented_medians_and_means():
    rng = random.Random(0)
    law = LengthLaw(170, 220)
    xs = [law.draw(rng) for _ in range(20000)]
    assert abs(statistics.median(xs) - 170) < 10
    assert abs(statistics.mean(xs) - 220) < 15  # clipping at 1,024 trims the mean a little
    assert min(xs) >= 4 and max(xs) <= 1024


def test_workload_is_seeded_and_clipped():
    a = sharegpt_workload(20, 1000, seed=3, max_input=16, max_output=5)
    b = sharegpt_workload(20, 1000, seed=3, max_input=16, max_output=5)
    assert a == b
    assert all(4 <= len(x) <= 16 and all(100 <= t < 1000 for t in x) for x in a.input_ids)
    assert all(1 <= n <= 5 for n in a.output_lens)


def test_sharegpt_bench_reports_modes_anatomy_json_and_reference(engine):
    df = benchmark(engine, ShareGPTConfig(num_requests=4, max_input=12, max_output=4, json_requests=2,
                                          json_max_new_tokens=48))
    rows = {(r["bench"], r["mode"]): r for r in df.to_dict(orient="records")}
    for mode in ("greedy", "sampled"):
        r = rows[("sharegpt", mode)]
        assert r["output_tokens"] == sum(sharegpt_workload(4, engine.vocab_size, max_input=12,
                                                           max_output=4).output_lens)
        assert r["prefill_s"] > 0 and r["decode_s"] > 0 and r["output_tok_per_s"] > 0
    json_row = next(r for r in rows.values() if r["bench"] == "json_schema" and "ratio_vs_free" in r
                    and not math.isnan(r["ratio_vs_free"]))
    assert json_row["valid"] + (json_row["requests"] - json_row["finished_by_grammar"]) >= json_row["requests"]
    assert any(r["bench"] == "reference" for r in rows.values())


def test_online_bench_streams_every_token_through_the_server(engine):
    work = sharegpt_workload(4, engine.vocab_size, seed=1, max_input=12, max_output=5)
    df = online_benchmark(engine, work, [float("inf"), 20.0])
    served = df[df.bench == "serving"]
    assert len(served) == 2
    assert (served.output_tokens == sum(work.output_lens)).all()
    assert (served.ttft_p50_s > 0).all() and (served.itl_p99_s >= served.itl_p50_s).all()
    assert df[df.bench == "in-process"].output_tokens.iloc[0] == sum(work.output_lens)
