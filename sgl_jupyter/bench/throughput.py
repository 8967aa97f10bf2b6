"""Batch-size sweep (``python -m sgl_jupyter.bench throughput``): the same prompts through the engine, HF
``generate`` (one padded batch) and HF ``generate_batch`` (continuous batching), in the same process on the
same weights, at each batch size; decode tokens/s and request latency, with an optional roofline.

Every request generates exactly ``max_new_tokens`` (``ignore_eos``), so padding costs HF nothing and the
three systems do the same work. At each batch size the systems run back to back (best of ``repeats``), so
load from elsewhere on a shared machine hits all of them alike.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import pandas as pd

from .workload import mixed_requests

ENGINE, HF_GENERATE, HF_GENERATE_BATCH = "sgl_jupyter engine", "HF generate", "HF generate_batch"
Roofline = Union[float, Mapping[int, float], Callable[[int], float], None]


@dataclass
class SweepConfig:
    batch_sizes: Sequence[int] = (1, 2, 4, 8, 16)
    max_new_tokens: int = 32
    max_prompt_sentences: int = 8
    systems: Sequence[str] = (ENGINE, HF_GENERATE, HF_GENERATE_BATCH)
    repeats: int = 1
    model_path: Optional[str] = None  # None: the embedded model
    device: str = "auto"
    dtype: str = "auto"
    load_format: str = "auto"  # "dummy": random weights (HF then gets the same config, random weights too)
    engine_kwargs: dict = field(default_factory=dict)


def _engine_run(engine, prompts: list[str], n: int) -> dict:
    params = {"max_new_tokens": n, "temperature": 0, "ignore_eos": True}
    engine.flush_cache()  # no prefix reuse between repeats: HF has none
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params)
    dt = time.perf_counter() - t0
    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    latency = sum(o["meta_info"]["e2e_latency"] for o in outs) / len(outs)
    return {"tokens": tokens, "seconds": dt, "latency_s": latency}


def _hf_run(system: str, model, tokenizer, prompts: list[str], n: int) -> Optional[dict]:
    from .hf_peers import hf_generate_batch, hf_padded_generate

    lens = [n] * len(prompts)
    if system == HF_GENERATE:
        r = hf_padded_generate(model, tokenizer, prompts, lens, batch_size=len(prompts))
    else:
        r = hf_generate_batch(model, tokenizer, prompts, lens)
        if r is None:
            return None
    # one batch: every request ends when the batch does
    return {"tokens": r["tokens"], "seconds": r["seconds"], "latency_s": r["seconds"]}


def run(cfg: Optional[SweepConfig] = None, engine=None, hf_model=None, progress: bool = True) -> pd.DataFrame:
    """One row per (system, batch size): tokens, seconds, tok_per_s, latency_s (mean per request).
    ``engine`` / ``hf_model``: already loaded ones to use (else built from ``cfg``, and shut down after)."""
    from tqdm.auto import tqdm

    from sgl_jupyter import Engine

    from .hf_peers import load_hf

    cfg = cfg or SweepConfig()
    own = engine is None
    if own:
        engine = Engine(cfg.model_path, device=cfg.device, dtype=cfg.dtype, load_format=cfg.load_format,
                        **cfg.engine_kwargs)
    rows: list[dict] = []
    try:
        hf_systems = [s for s in cfg.systems if s != ENGINE]
        if hf_systems and hf_model is None:
            hf_model = load_hf(engine.args.model_path, str(engine.device), engine.loaded.dtype,
                               engine.args.load_format)
        tok = engine.tokenizer
        reqs = mixed_requests(max(cfg.batch_sizes), max_in=cfg.max_prompt_sentences)
        prompts_all = [r.prompt for r in reqs]
        skipped: set[str] = set()
        bar = tqdm(total=len(cfg.systems) * (1 + len(cfg.batch_sizes) * cfg.repeats), desc="throughput sweep",
                   disable=not progress)
        try:
            for system in cfg.systems:  # warm-up, untimed: first-call allocations and HF's cache set-up
                bar.set_description(f"warm-up: {system}")
                if system == ENGINE:
                    _engine_run(engine, prompts_all[:2], 2)
                elif _hf_run(system, hf_model, tok, prompts_all[:2], 2) is None:
                    skipped.add(system)  # this transformers has no generate_batch
                bar.update(1)
            for bs in cfg.batch_sizes:
                prompts = prompts_all[:bs]
                best: dict[str, dict] = {}
                for _ in range(cfg.repeats):
                    for system in cfg.systems:
                        bar.set_description(f"bs={bs}: {system}")
                        if system not in skipped:
                            r = (_engine_run(engine, prompts, cfg.max_new_tokens) if system == ENGINE
                                 else _hf_run(system, hf_model, tok, prompts, cfg.max_new_tokens))
                            if system not in best or r["seconds"] < best[system]["seconds"]:
                                best[system] = r
                        bar.update(1)
                for system, r in best.items():
                    rows.append({"system": system, "batch_size": bs, **r, "tok_per_s": r["tokens"] / r["seconds"]})
        finally:
            bar.close()
    finally:
        if own:
            engine.shutdown()
    df = pd.DataFrame(rows)
    ours = df[df.system == ENGINE].set_index("batch_size")["tok_per_s"]
    df["engine_speedup"] = [ours.get(bs, float("nan")) / t for bs, t in zip(df.batch_size, df.tok_per_s)]
    df.attrs["device"] = str(engine.device)
    return df


def pivot(df: pd.DataFrame, column: str = "tok_per_s") -> pd.DataFrame:
    """Batch size x system table of one column (tokens/s by default), systems in the order they ran."""
    return df.pivot(index="batch_size", columns="system", values=column)[list(dict.fromkeys(df.system))]


def roofline_points(roofline: Roofline, batch_sizes: Sequence[int]) -> Optional[list[float]]:
    """The roofline in tokens/s at each batch size. A number is the bs=1 decode bound and scales with the
    batch (decode is memory-bound: the weights are read once a step for the whole batch); a mapping or a
    callable gives the bound per batch size (e.g. from ``sgl_jupyter.bench.latency`` on a GPU)."""
    if roofline is None:
        return None
    if callable(roofline):
        return [float(roofline(bs)) for bs in batch_sizes]
    if isinstance(roofline, Mapping):
        return [float(roofline[bs]) for bs in batch_sizes]
    return [float(roofline) * bs for bs in batch_sizes]


def plot(df: pd.DataFrame, roofline: Roofline = None):
    """Tokens/s and mean request latency against batch size, one line per system (and the roofline)."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    sizes = sorted(df.batch_size.unique())
    for system, sub in df.groupby("system", sort=False):
        sub = sub.sort_values("batch_size")
        ax1.plot(sub.batch_size, sub.tok_per_s, marker="o", label=system)
        ax2.plot(sub.batch_size, sub.latency_s, marker="o", label=system)
    line = roofline_points(roofline, sizes)
    if line is not None:
        ax1.plot(sizes, line, "k--", label="roofline")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.grid(alpha=0.3)
        ax.set_xlabel("batch size (concurrent requests)")
    ax1.set(ylabel="decode tokens/s", title=f"Throughput ({df.attrs.get('device', '')})")
    ax2.set(ylabel="mean request latency (s)", title="Latency")
    ax1.legend()
    fig.tight_layout()
    return fig


def run_cli(args: Any) -> pd.DataFrame:
    """Entry for ``python -m sgl_jupyter.bench throughput``."""
    cfg = SweepConfig(model_path=args.model_path, device=args.device, dtype=args.dtype, load_format=args.load_format)
    if getattr(args, "batch_sizes", None):
        cfg.batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    if getattr(args, "max_new_tokens", None):
        cfg.max_new_tokens = args.max_new_tokens
    return run(cfg)
