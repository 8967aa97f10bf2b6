"""Constrained vs free decoding throughput on one batch (``python -m sgl_jupyter.bench constrained``).

The constrained batch asks for a user profile under a JSON schema. The free batch is the same prompts
with each request forced (``ignore_eos``) to generate exactly as many tokens as its constrained twin,
so both batches have the same shape step by step and the difference is the grammar's cost: bitmask
fill + apply per step, minus the steps jump-forward saves. With jump-forward off the ratio isolates
the masking overhead.
"""
from __future__ import annotations

import json
import statistics
import time
from typing import Optional, Sequence

import pandas as pd

PROFILE_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 10},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
    },
    "required": ["name", "age", "city", "hobbies"],
}

PEOPLE = [("张三", 28, "北京"), ("李四", 35, "上海"), ("王五", 42, "广州"), ("赵六", 19, "深圳"),
          ("Alice", 31, "London"), ("Bob", 25, "Paris"), ("Carol", 57, "Berlin"), ("Dave", 64, "Madrid"),
          ("孙七", 23, "杭州"), ("周八", 38, "成都"), ("吴九", 46, "南京"), ("郑十", 29, "武汉"),
          ("Erin", 33, "Tokyo"), ("Frank", 51, "Rome"), ("Grace", 22, "Oslo"), ("Heidi", 40, "Vienna")]


def profile_prompts(tokenizer, n: int) -> list[str]:
    """n chat prompts (the seed's wording) for different people."""
    out = []
    for i in range(n):
        name, age, city = PEOPLE[i % len(PEOPLE)]
        msg = f"请根据以下信息生成用户资料(JSON):{name},{age}岁,住在{city}"
        out.append(tokenizer.apply_chat_template([{"role": "user", "content": msg}], tokenize=False,
                                                 add_generation_prompt=True))
    return out


def set_jump_forward(engine, enabled: bool) -> None:
    """Switch grammar jump-forward on a running engine (read by the scheduler thread every step)."""
    engine.scheduler.enable_jump_forward = enabled


def _timed(engine, prompts: Sequence[str], params: list[dict]) -> tuple[list[dict], float, float, int]:
    """Outputs, wall seconds, process CPU seconds (all threads: steadier than wall time on a shared
    machine), model steps."""
    engine.flush_cache()  # both runs prefill from scratch
    steps = engine.runner.forward_calls
    t0, c0 = time.perf_counter(), time.process_time()
    outs = engine.generate(list(prompts), params)
    return outs, time.perf_counter() - t0, time.process_time() - c0, engine.runner.forward_calls - steps


def schema_valid(text: str, schema: dict) -> bool:
    """Whether ``text``, as it is, parses as JSON that satisfies ``schema``."""
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


def _valid_fraction(outs: list[dict], schema: dict) -> float:
    return sum(schema_valid(o["text"], schema) for o in outs) / max(len(outs), 1)


def benchmark_constrained(engine=None, *, batch_size: int = 16, max_new_tokens: int = 64, repeats: int = 3,
                          schema: Optional[dict] = None, jump_forward: Sequence[bool] = (False, True),
                          verbose: bool = True, progress: bool = True) -> pd.DataFrame:
    """Throughput of a JSON-schema-constrained batch vs the same batch unconstrained (greedy).

    Returns one row per timed run. Runs come in back-to-back pairs (order alternating) and each pair
    gives a ratio; ``df.attrs["ratio"]`` maps ``jump_forward`` -> the median over pairs of constrained
    tokens/s over free tokens/s (wall clock), ``df.attrs["cpu_ratio"]`` the same per CPU second.
    """
    from tqdm.auto import tqdm

    from sgl_jupyter import Engine

    schema = schema or PROFILE_SCHEMA
    own = engine is None
    if own:
        engine = Engine()
    rows: list[dict] = []
    bar = tqdm(total=2 * repeats * len(jump_forward), desc="constrained vs free", disable=not progress)
    try:
        prompts = profile_prompts(engine.tokenizer, batch_size)
        cparams = [{"json_schema": schema, "temperature": 0, "max_new_tokens": max_new_tokens}] * batch_size
        engine.generate(prompts[:2], cparams[:2])  # warm up: compile the grammar, first-call overheads
        for jf in jump_forward:
            set_jump_forward(engine, jf)
            lengths: Optional[list[int]] = None  # per request, from the constrained run (greedy: stable)
            for rep in range(repeats):
                # alternate the order so that neither mode always runs on a warmer machine
                runs = ["constrained", "free"] if rep % 2 == 0 else ["free", "constrained"]
                for mode in runs:
                    bar.set_description(f"{mode}, jump-forward {'on' if jf else 'off'}")
                    if mode == "constrained":
                        outs, secs, cpu, steps = _timed(engine, prompts, cparams)
                        lengths = [o["meta_info"]["completion_tokens"] for o in outs]
                        valid = _valid_fraction(outs, schema)
                    else:
                        fparams = [{"temperature": 0, "max_new_tokens": n, "ignore_eos": True} for n in lengths]
                        outs, secs, cpu, steps = _timed(engine, prompts, fparams)
                        valid = float("nan")
                    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
                    rows.append({"mode": mode, "jump_forward": jf, "repeat": rep, "requests": batch_size,
                                 "completion_tokens": tokens, "forward_steps": steps, "seconds": secs,
                                 "cpu_seconds": cpu, "tokens_per_s": tokens / secs,
                                 "tokens_per_cpu_s": tokens / cpu, "valid_fraction": valid})
                    bar.update(1)
    finally:
        bar.close()
        set_jump_forward(engine, True)
        if own:
            engine.shutdown()
    df = pd.DataFrame(rows)
    df.attrs["ratio"] = _pair_ratios(df, "tokens_per_s")
    df.attrs["cpu_ratio"] = _pair_ratios(df, "tokens_per_cpu_s")
    if verbose:
        print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        for jf, r in df.attrs["ratio"].items():
            print(f"constrained/free throughput ratio (jump_forward={'on' if jf else 'off'}): {r:.3f} wall, "
                  f"{df.attrs['cpu_ratio'][jf]:.3f} per CPU second")
    return df


def plot(df: pd.DataFrame):
    """Tokens/s of the constrained and the free batch (median over repeats), per jump-forward setting."""
    import matplotlib.pyplot as plt

    med = df.groupby(["jump_forward", "mode"]).tokens_per_s.median().unstack("mode")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    med.index = [f"jump-forward {'on' if jf else 'off'}" for jf in med.index]
    med[["free", "constrained"]].plot.bar(ax=ax, rot=0, color=["tab:gray", "tab:green"])
    for jf, r in df.attrs.get("ratio", {}).items():
        x = list(med.index).index(f"jump-forward {'on' if jf else 'off'}")
        ax.annotate(f"{r:.2f}x", (x, med.iloc[x].max()), ha="center", va="bottom")
    ax.set(ylabel="tokens/s", title="JSON-schema constrained vs free decoding (same shape)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _pair_ratios(df: pd.DataFrame, column: str) -> dict:
    """Median over the back-to-back (constrained, free) pairs of constrained[column] / free[column]."""
    out = {}
    for jf, sub in df.groupby("jump_forward"):
        pairs = [g.set_index("mode")[column] for _, g in sub.groupby("repeat")]
        out[bool(jf)] = statistics.median(p["constrained"] / p["free"] for p in pairs)
    return out


def run_cli(args) -> pd.DataFrame:
    """Entry for ``python -m sgl_jupyter.bench constrained`` (reads that parser's model/device options;
    ``--num-requests`` is the batch size, at most 64)."""
    from sgl_jupyter import Engine

    kwargs = {k: getattr(args, k) for k in ("device", "dtype", "load_format") if getattr(args, k, None)}
    with Engine(getattr(args, "model_path", None), **kwargs) as engine:
        return benchmark_constrained(engine, batch_size=min(getattr(args, "num_requests", 16) or 16, 64))


def main(argv: Optional[Sequence[str]] = None) -> pd.DataFrame:
    import argparse

    p = argparse.ArgumentParser(prog="python -m sgl_jupyter.bench constrained", description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model-path", default=None)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    from sgl_jupyter import Engine

    with Engine(a.model_path, device=a.device) as engine:
        return benchmark_constrained(engine, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens,
                                     repeats=a.repeats)


if __name__ == "__main__":
    main()
