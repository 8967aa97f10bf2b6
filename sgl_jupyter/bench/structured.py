"""Validity of structured output over many samples (``python -m sgl_jupyter.bench structured``): a regex
(the seed's user-profile pattern, lengths bounded), a JSON schema, and a choice among labels, each asked
for in the prompt and sampled ``samples`` times with the constraint (regex / json_schema / the labels as a
regex alternation; the DSL's ``select`` instead scores every label, which is valid by construction) and
without it. An output counts as valid only as a program would take it: the whole text matches the regex,
parses under the schema, or is one of the labels (ignoring case, spaces and a final full stop).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import pandas as pd

from .constrained import PEOPLE, PROFILE_SCHEMA, schema_valid

# the seed article's 4.1 pattern with bounded lengths, so that a sample always ends within max_new_tokens
PROFILE_REGEX = r'\{"name": "[^"]{1,16}", "age": \d{1,3}\}'
LABELS = ("positive", "negative", "neutral")
_REVIEWS = ["这家餐厅的菜太好吃了!", "The delivery was late and the box was broken.", "It is a phone.",
            "I love this book, I read it twice.", "服务很差,再也不来了。", "The meeting is at 3 pm."]


@dataclass
class Task:
    name: str
    prompts: Callable[[int], list[str]]  # n user messages
    constraint: dict  # sampling params that constrain the output
    valid: Callable[[str], bool]
    max_new_tokens: int  # room for any output the constraint allows


def _label(text: str) -> str:
    """A free answer as a lenient reader takes it: "Negative." -> "negative"."""
    return text.strip().rstrip(".!").strip().lower()


def tasks() -> dict[str, Task]:
    def people(fmt: str) -> Callable[[int], list[str]]:
        return lambda n: [fmt.format(*PEOPLE[i % len(PEOPLE)]) for i in range(n)]

    labels_regex = "(" + "|".join(re.escape(c) for c in LABELS) + ")"
    return {
        "regex": Task("regex", people('请根据以下信息生成用户资料,格式 {{"name": "...", "age": 数字}}:{0},{1}岁'),
                      {"regex": PROFILE_REGEX}, lambda t: re.fullmatch(PROFILE_REGEX, t) is not None, 48),
        "json_schema": Task("json_schema", people("请根据以下信息生成用户资料(JSON):{0},{1}岁,住在{2}"),
                            {"json_schema": PROFILE_SCHEMA}, lambda t: schema_valid(t, PROFILE_SCHEMA), 128),
        "choices": Task("choices",
                        lambda n: [f"Is this review positive, negative or neutral? Answer with one word.\n"
                                   f"{_REVIEWS[i % len(_REVIEWS)]}" for i in range(n)],
                        {"regex": labels_regex}, lambda t: _label(t) in LABELS, 8),
    }


def run(engine=None, samples: int = 32, temperature: float = 0.8,
        kinds: Sequence[str] = ("regex", "json_schema", "choices"), seed: int = 0,
        progress: bool = True) -> pd.DataFrame:
    """One row per (kind, constrained/free): samples, valid, valid_fraction, tokens, seconds, tok_per_s,
    and an example output. All samples of a row go to the engine as one batch."""
    from tqdm.auto import tqdm

    from sgl_jupyter import Engine

    own = engine is None
    if own:
        engine = Engine()
    all_tasks = tasks()
    rows = []
    bar = tqdm(total=2 * len(kinds), desc="structured output", disable=not progress)
    try:
        for kind in kinds:
            task = all_tasks[kind]
            prompts = [engine.tokenizer.apply_chat_template([{"role": "user", "content": m}], tokenize=False,
                                                            add_generation_prompt=True)
                       for m in task.prompts(samples)]
            for mode in ("constrained", "free"):
                bar.set_description(f"{kind}: {mode}")
                params = [{"max_new_tokens": task.max_new_tokens, "temperature": temperature, "seed": seed + i,
                           **(task.constraint if mode == "constrained" else {})} for i in range(samples)]
                engine.flush_cache()
                t0 = time.perf_counter()
                outs = engine.generate(prompts, params)
                dt = time.perf_counter() - t0
                texts = [o["text"] for o in outs]
                ok = [task.valid(t) for t in texts]
                tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
                rows.append({"kind": kind, "mode": mode, "samples": samples, "valid": sum(ok),
                             "valid_fraction": sum(ok) / samples, "tokens": tokens, "seconds": dt,
                             "tok_per_s": tokens / dt, "example": texts[0]})
                bar.update(1)
    finally:
        bar.close()
        if own:
            engine.shutdown()
    return pd.DataFrame(rows)


def plot(df: pd.DataFrame):
    """Valid fraction and tokens/s per kind, constrained vs free."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    colors = {"free": "tab:gray", "constrained": "tab:green"}
    for ax, column, title in ((ax1, "valid_fraction", "Valid outputs"), (ax2, "tok_per_s", "Decode speed")):
        table = df.pivot(index="kind", columns="mode", values=column)[["free", "constrained"]]
        if column == "valid_fraction":
            table = 100 * table
        table.plot.bar(ax=ax, rot=0, color=[colors[c] for c in table.columns])
        ax.set(title=title, xlabel="", ylabel="% of samples" if column == "valid_fraction" else "tokens/s")
        ax.grid(axis="y", alpha=0.3)
    ax1.set_ylim(0, 125)
    ax1.legend(loc="upper center", ncol=2)
    ax2.set_title("Decode speed (constrained: with jump-forward)")
    for patch in ax1.patches:
        ax1.annotate(f"{patch.get_height():.0f}%", (patch.get_x() + patch.get_width() / 2, patch.get_height()),
                     ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    return fig


def run_cli(args) -> pd.DataFrame:
    """Entry for ``python -m sgl_jupyter.bench structured`` (``--num-requests`` samples per row)."""
    from sgl_jupyter import Engine

    kwargs = {k: getattr(args, k) for k in ("device", "dtype", "load_format")}
    with Engine(args.model_path, **kwargs) as engine:
        return run(engine, samples=args.num_requests)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """kind x mode table of valid fractions."""
    return df.pivot(index="kind", columns="mode", values="valid_fraction")

