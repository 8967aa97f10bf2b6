"""Offline throughput: the same mixed-length requests through the engine (continuous batching) and
HF transformers (padded ``generate``, plus ``generate_batch`` when asked), and bs=1 decode speed."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from .workload import mixed_requests


@dataclass
class OfflineConfig:
    model_path: Optional[str] = None
    num_requests: int = 64
    min_out: int = 16
    max_out: int = 64
    hf_batch_size: int = 64
    device: str = "auto"
    dtype: str = "auto"
    load_format: str = "auto"
    bs1_tokens: int = 64
    hf_generate_batch: bool = False
    engine_kwargs: Optional[dict] = None


def _on_cuda(device: str) -> bool:
    import torch

    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def _engine_offline(engine, prompts: list[str], params: list[dict]) -> dict:
    engine.generate(prompts[:2], {"max_new_tokens": 4, "ignore_eos": True})  # warm-up
    engine.flush_cache()
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params)
    dt = time.perf_counter() - t0
    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    return {"requests": len(prompts), "tokens": tokens, "seconds": dt, "tok_per_s": tokens / dt}


def _engine_bs1(engine, prompt: str, n: int, best: Optional[dict]) -> dict:
    """One bs=1 generation of ``n`` tokens; the faster of it and ``best``."""
    engine.flush_cache()
    t0 = time.perf_counter()
    o = engine.generate(prompt, {"max_new_tokens": n, "temperature": 0, "ignore_eos": True})
    dt = time.perf_counter() - t0
    if best is not None and best["seconds"] <= dt:
        return best
    return {"tokens": o["meta_info"]["completion_tokens"], "seconds": dt,
            "tok_per_s": o["meta_info"]["completion_tokens"] / dt}


def run(cfg: OfflineConfig, progress: bool = True) -> pd.DataFrame:
    from tqdm.auto import tqdm

    from sgl_jupyter import Engine

    from .hf_peers import hf_generate_batch, hf_padded_generate, load_hf

    reqs = mixed_requests(cfg.num_requests, min_out=cfg.min_out, max_out=cfg.max_out)
    prompts = [r.prompt for r in reqs]
    lens = [r.max_new_tokens for r in reqs]
    # the HF peers share the GPU with the engine: leave them half of it (the KV pool takes the rest)
    kwargs = dict(cfg.engine_kwargs or {})
    if _on_cuda(cfg.device):
        kwargs = {"mem_fraction_static": 0.5, **kwargs}
    quant = kwargs.pop("quantization", None)  # measured after the dense engine, in the same run
    engine = Engine(cfg.model_path, device=cfg.device, dtype=cfg.dtype, load_format=cfg.load_format, **kwargs)
    rows = []
    try:
        hf = load_hf(engine.args.model_path, str(engine.device), engine.loaded.dtype, cfg.load_format)
        tokenizer = engine.tokenizer
        params = [{"max_new_tokens": n, "temperature": 0, "ignore_eos": True} for n in lens]
        rows.append({"bench": "offline", "system": "sgl_jupyter engine", **_engine_offline(engine, prompts, params)})
        if cfg.hf_batch_size > 0:  # 0: only the generate_batch peer (the padded one costs ~35 s on an 8B GPU run)
            bar = tqdm(total=len(prompts), desc="HF generate (padded)", disable=not progress)
            r = hf_padded_generate(hf, tokenizer, prompts, lens, cfg.hf_batch_size, progress=bar)
            bar.close()
            rows.append({"bench": "offline", "system": f"HF generate (padded, bs={cfg.hf_batch_size})",
                         "requests": len(prompts), **r})
        if cfg.hf_generate_batch:
            r = hf_generate_batch(hf, tokenizer, prompts, lens)
            if r is not None:
                rows.append({"bench": "offline", "system": "HF generate_batch", "requests": len(prompts), **r})
        # bs=1: alternate the two systems and keep each one's best of three, so load on a shared
        # machine hits both alike
        one, best_engine, best_hf = prompts[0], None, None
        for _ in range(3):
            best_engine = _engine_bs1(engine, one, cfg.bs1_tokens, best_engine)
            r = hf_padded_generate(hf, tokenizer, [one], [cfg.bs1_tokens], 1)
            if best_hf is None or r["seconds"] < best_hf["seconds"]:
                best_hf = r
        rows.append({"bench": "bs=1", "system": "sgl_jupyter engine", "requests": 1, **best_engine})
        rows.append({"bench": "bs=1", "system": "HF generate", "requests": 1, **best_hf})
        del hf
    finally:
        engine.shutdown()
    if quant:
        if _on_cuda(cfg.device):
            import torch

            torch.cuda.empty_cache()  # HF's weights go back before the quantized engine sizes its KV pool
        engine = Engine(cfg.model_path, device=cfg.device, dtype=cfg.dtype, load_format=cfg.load_format,
                        quantization=quant, **kwargs)
        try:
            label = f"sgl_jupyter engine ({quant})"
            rows.append({"bench": "offline", "system": label, **_engine_offline(engine, prompts, params)})
            best = None
            for _ in range(3):
                best = _engine_bs1(engine, prompts[0], cfg.bs1_tokens, best)
            rows.append({"bench": "bs=1", "system": label, "requests": 1, **best})
        finally:
            engine.shutdown()
    df = pd.DataFrame(rows)
    ours = df[df.system == "sgl_jupyter engine"].set_index("bench")["tok_per_s"]
    df["engine_speedup"] = [ours[b] / t for b, t in zip(df.bench, df.tok_per_s)]
    return df


def plot(df: pd.DataFrame):
    """Tokens/s of every system, the mixed batch and bs=1 side by side."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, df.bench.nunique(), figsize=(11, 3.2), squeeze=False)
    for ax, (bench, sub) in zip(axes[0], df.groupby("bench", sort=False)):
        ax.barh(sub.system, sub.tok_per_s, color=["C0" if s == "sgl_jupyter engine" else "C7" for s in sub.system])
        ax.invert_yaxis()
        ax.set(xlabel="tokens/s", title=f"{bench} ({int(sub.requests.iloc[0])} requests)")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
