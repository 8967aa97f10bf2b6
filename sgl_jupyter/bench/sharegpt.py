"""ShareGPT-like serving throughput, in process (``python -m sgl_jupyter.bench sharegpt``).

No data set is downloaded: prompts are seeded random token ids whose lengths follow lognormal laws fitted to
ShareGPT's (input median ~170 / mean ~220 tokens, output median ~150 / mean ~200, both clipped to
[4, 1024]); every request runs to its own ``max_new_tokens`` (``ignore_eos``), as SGLang's
``bench_offline_throughput --dataset-name sharegpt`` does. One run prints, per sampling mode (greedy; T=0.8
top_p=0.95 with per-request seeds): output tok/s, total tok/s, req/s and the run's anatomy from the engine's
own StepEvents (prefill time, decode time by batch size, the long-output tail); HF ``generate_batch`` on a
subset, with the engine on the same subset, as the in-run peer; a JSON-schema batch against the same batch
free; and SGLang's published figure as a labelled reference (not run here).
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

# SGLang's published offline throughput for Llama-3.1-8B, 1,000 ShareGPT prompts, one H100 (sglang docs /
# blog, v0.2): a reference line in the table, never a measurement of this run
SGLANG_REFERENCE = {"system": "SGLang (published, Llama-3.1-8B, H100, 1,000 ShareGPT prompts; not run here)",
                    "output_tok_per_s": 16215.0}
SAMPLED = {"temperature": 0.8, "top_p": 0.95}
# a 3-field schema (the JSON workload)
JSON_SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "city": {"type": "string", "maxLength": 16}}, "required": ["name", "age", "city"]}


@dataclass
class LengthLaw:
    """A lognormal length law given by its median and mean, clipped to [lo, hi]."""
    median: float
    mean: float
    lo: int = 4
    hi: int = 1024

    def draw(self, rng: random.Random) -> int:
        sigma = math.sqrt(2 * math.log(self.mean / self.median))
        return int(min(self.hi, max(self.lo, round(rng.lognormvariate(math.log(self.median), sigma)))))


@dataclass
class ShareGPTWorkload:
    input_ids: list[list[int]]
    output_lens: list[int]

    @property
    def input_tokens(self) -> int:
        return sum(len(x) for x in self.input_ids)

    def subset(self, n: int) -> "ShareGPTWorkload":
        return ShareGPTWorkload(self.input_ids[:n], self.output_lens[:n])


def sharegpt_workload(n: int, vocab_size: int, seed: int = 0, input_law: LengthLaw = LengthLaw(170, 220),
                      output_law: LengthLaw = LengthLaw(150, 200), max_input: Optional[int] = None,
                      max_output: Optional[int] = None) -> ShareGPTWorkload:
    """``n`` requests of random token ids (ids 100..vocab-1: no special tokens of the usual tokenizers at
    the low end); ``max_input``/``max_output`` clip further (small CPU runs)."""
    rng = random.Random(seed)
    ids, outs = [], []
    hi = max(101, vocab_size - 1)
    for _ in range(n):
        n_in = min(input_law.draw(rng), max_input or input_law.hi)
        ids.append([rng.randrange(100, hi) for _ in range(n_in)])
        outs.append(min(output_law.draw(rng), max_output or output_law.hi))
    return ShareGPTWorkload(ids, outs)


COUNTERS = ("sampled_launches", "overlapped_launches", "decode_gap_steps", "jump_forward_tokens_total",
            "draft_tokens_total", "draft_tokens_accepted")


def _counters(engine) -> dict:
    """The scheduler's path counters and the model's forward calls (a run's delta says which paths ran)."""
    out = {name: getattr(engine.scheduler, name, 0) for name in COUNTERS}
    out["forward_calls"] = engine.runner.forward_calls
    return out


def _delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in before}


@dataclass
class Anatomy:
    """Where one run's time went, from the engine's StepEvents."""
    events: list = field(default_factory=list)

    def __call__(self, event) -> None:
        if type(event).__name__ == "StepEvent":
            self.events.append((time.perf_counter(), event.mode, event.batch_size, event.duration_s))

    def summary(self, wall: float) -> dict:
        ev = self.events
        prefill = sum(d for _, m, _, d in ev if m == "extend")
        decode = [(t, b, d) for t, m, b, d in ev if m == "decode"]
        last_extend = max((t for t, m, _, _ in ev if m == "extend"), default=0.0)
        return {"prefill_s": prefill, "prefill_steps": sum(1 for e in ev if e[1] == "extend"),
                "decode_s": sum(d for _, _, d in decode),
                "decode_s_bs_lt64": sum(d for _, b, d in decode if b < 64),
                "decode_s_bs_64_255": sum(d for _, b, d in decode if 64 <= b < 256),
                "decode_s_bs_ge256": sum(d for _, b, d in decode if b >= 256),
                # the long-output tail: decode after the last prefill with fewer than 64 rows left
                "tail_s": sum(d for t, b, d in decode if t > last_extend and b < 64),
                "host_gap_s": max(0.0, wall - prefill - sum(d for _, _, d in decode))}


def run_engine(engine, work: ShareGPTWorkload, extra: Optional[dict] = None, seed: Optional[int] = None) -> dict:
    """All requests at once through ``Engine.generate``; returns throughput and anatomy. ``seed``: per-request
    seeds ``seed + i`` (reproducible sampling whatever the batch)."""
    params = []
    for i, n in enumerate(work.output_lens):
        p = {"max_new_tokens": n, "ignore_eos": True, "temperature": 0.0, **(extra or {})}
        if seed is not None:
            p["seed"] = seed + i
        params.append(p)
    engine.flush_cache()
    anatomy = Anatomy()
    unsubscribe = engine.subscribe(anatomy)
    c0 = _counters(engine)
    try:
        t0 = time.perf_counter()
        outs = engine.generate(input_ids=work.input_ids, sampling_params=params)
        wall = time.perf_counter() - t0
    finally:
        unsubscribe()
    counters = _delta(c0, _counters(engine))
    out_tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    return {"requests": len(outs), "input_tokens": work.input_tokens, "output_tokens": out_tokens,
            "seconds": wall, "output_tok_per_s": out_tokens / wall,
            "total_tok_per_s": (out_tokens + work.input_tokens) / wall, "req_per_s": len(outs) / wall,
            **anatomy.summary(wall), **counters, "_outputs": outs}


def json_vs_free(engine, n: int = 256, max_new_tokens: int = 128, temperature: float = 0.8) -> list[dict]:
    """A JSON-schema batch (T=0.8) against the same prompts free with the same per-request token counts:
    the per-token throughput ratio is the grammar's cost; every finished constrained output is checked."""
    msgs = [f"Write a JSON profile for person number {i}: name, age and city." for i in range(n)]
    tok = engine.tokenizer
    prompts = [tok.apply_chat_template([{"role": "user", "content": m}], tokenize=False, add_generation_prompt=True)
               if getattr(tok, "chat_template", None) else m for m in msgs]
    schema = json.dumps(JSON_SCHEMA)
    rows = []
    engine.flush_cache()
    c0 = _counters(engine)
    t0 = time.perf_counter()
    outs = engine.generate(prompts, [{"max_new_tokens": max_new_tokens, "temperature": temperature,
                                      "json_schema": schema, "seed": i} for i in range(n)])
    dt = time.perf_counter() - t0
    counters = _delta(c0, _counters(engine))
    toks = [o["meta_info"]["completion_tokens"] for o in outs]
    valid = 0
    for o in outs:
        try:
            obj = json.loads(o["text"])
            valid += isinstance(obj, dict) and all(k in obj for k in JSON_SCHEMA["required"])
        except ValueError:
            pass
    rows.append({"mode": f"json_schema T={temperature}", "requests": n, "output_tokens": sum(toks), "seconds": dt,
                 "output_tok_per_s": sum(toks) / dt, "valid": valid,
                 "finished_by_grammar": sum(o["meta_info"]["finish_reason"]["type"] == "stop" for o in outs),
                 **counters})
    engine.flush_cache()
    c1 = _counters(engine)
    t0 = time.perf_counter()
    free = engine.generate(prompts, [{"max_new_tokens": max(1, t), "temperature": temperature, "ignore_eos": True,
                                      "seed": i} for i, t in enumerate(toks)])
    dt = time.perf_counter() - t0
    ft = sum(o["meta_info"]["completion_tokens"] for o in free)
    rows.append({"mode": f"free T={temperature} (same token counts)", "requests": n, "output_tokens": ft,
                 "seconds": dt, "output_tok_per_s": ft / dt, **_delta(c1, _counters(engine))})
    rows[0]["ratio_vs_free"] = rows[0]["output_tok_per_s"] / rows[1]["output_tok_per_s"]
    return rows


def hf_subset(engine, work: ShareGPTWorkload, load_format: str) -> Optional[dict]:
    """HF ``generate_batch`` on the subset (one max_new_tokens for all: only each request's own tokens
    count, as for the engine); None when this transformers has no generate_batch."""
    import torch

    from .hf_peers import _cpu_cache_config, _sync, load_hf

    hf = load_hf(engine.args.model_path, str(engine.device), engine.loaded.dtype, load_format)
    if not hasattr(hf, "generate_batch"):
        return None
    from transformers import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=max(work.output_lens), do_sample=False, eos_token_id=-1,
                           pad_token_id=engine.tokenizer.pad_token_id or 0)
    extra = {}
    if hf.device.type == "cpu":
        extra = _cpu_cache_config(work.input_tokens + len(work.input_ids) * max(work.output_lens), len(work.input_ids))
    with torch.no_grad():
        _sync(hf.device)
        t0 = time.perf_counter()
        hf.generate_batch(inputs=work.input_ids, generation_config=cfg, progress_bar=False, **extra)
        _sync(hf.device)
        dt = time.perf_counter() - t0
    del hf
    tokens = sum(work.output_lens)
    return {"requests": len(work.input_ids), "output_tokens": tokens, "seconds": dt, "output_tok_per_s": tokens / dt}


@dataclass
class ShareGPTConfig:
    num_requests: int = 1000
    modes: tuple = ("greedy", "sampled")
    hf_subset: int = 0  # requests of the HF generate_batch peer (0: no peer)
    json_requests: int = 0  # size of the JSON-schema batch (0: skipped)
    json_max_new_tokens: int = 128
    max_input: Optional[int] = None
    max_output: Optional[int] = None
    load_format: str = "auto"
    seed: int = 0


def benchmark(engine, cfg: ShareGPTConfig) -> pd.DataFrame:
    work = sharegpt_workload(cfg.num_requests, engine.vocab_size, cfg.seed, max_input=cfg.max_input,
                             max_output=cfg.max_output)
    engine.generate(input_ids=work.input_ids[:4], sampling_params={"max_new_tokens": 4, "ignore_eos": True})
    rows = []
    for mode in cfg.modes:
        extra, seed = (SAMPLED, cfg.seed) if mode == "sampled" else ({}, None)
        try:
            r = run_engine(engine, work, extra, seed)
        except Exception as e:  # noqa: BLE001 - the other modes' figures stand; the table says what failed
            rows.append({"bench": "sharegpt", "mode": mode, "system": "sgl_jupyter engine", "error": repr(e)})
            print(f"[sharegpt] {mode} failed: {e!r}", flush=True)
            continue
        r.pop("_outputs")
        rows.append({"bench": "sharegpt", "mode": mode, "system": "sgl_jupyter engine", **r})
        print(f"[sharegpt] {mode}: {r['output_tok_per_s']:.0f} output tok/s in {r['seconds']:.2f} s", flush=True)
    greedy = next((r.get("output_tok_per_s") for r in rows if r["mode"] == "greedy"), None)
    for r in rows:
        r["vs_greedy"] = r["output_tok_per_s"] / greedy if greedy and "output_tok_per_s" in r else None
    if cfg.hf_subset:
        sub = work.subset(cfg.hf_subset)
        r = run_engine(engine, sub)
        r.pop("_outputs")
        rows.append({"bench": f"subset {cfg.hf_subset}", "mode": "greedy", "system": "sgl_jupyter engine", **r})
        hf = hf_subset(engine, sub, cfg.load_format)
        if hf is not None:
            rows.append({"bench": f"subset {cfg.hf_subset}", "mode": "greedy", "system": "HF generate_batch", **hf,
                         "engine_speedup": r["output_tok_per_s"] / hf["output_tok_per_s"]})
    if cfg.json_requests:
        try:
            for r in json_vs_free(engine, cfg.json_requests, cfg.json_max_new_tokens):
                rows.append({"bench": "json_schema", "system": "sgl_jupyter engine", **r})
        except Exception as e:  # noqa: BLE001 - the figures above stand; the table says what failed
            rows.append({"bench": "json_schema", "system": "sgl_jupyter engine", "error": repr(e)})
    rows.append({"bench": "reference", "mode": "greedy", **SGLANG_REFERENCE})
    return pd.DataFrame(rows)


def run_cli(args) -> pd.DataFrame:
    """Entry for ``python -m sgl_jupyter.bench sharegpt`` (``--num-requests``, ``--hf-subset``,
    ``--json-requests``, ``--max-input``/``--max-output`` for small CPU runs)."""
    from sgl_jupyter import Engine

    kwargs = {k: getattr(args, k) for k in ("device", "dtype", "load_format") if getattr(args, k, None)}
    if getattr(args, "hf_subset", 0) and _on_cuda(kwargs.get("device", "auto")):
        kwargs["mem_fraction_static"] = 0.6  # the HF peer loads its own copy of the weights on the same GPU
    kwargs.update(getattr(args, "engine_kwargs", None) or {})
    cfg = ShareGPTConfig(num_requests=args.num_requests, hf_subset=getattr(args, "hf_subset", 0) or 0,
                         json_requests=getattr(args, "json_requests", 0) or 0,
                         max_input=getattr(args, "max_input", None), max_output=getattr(args, "max_output", None),
                         load_format=getattr(args, "load_format", "auto") or "auto",
                         modes=tuple((getattr(args, "modes", None) or "greedy,sampled").split(",")))
    with Engine(args.model_path, **kwargs) as engine:
        df = benchmark(engine, cfg)
        df.attrs["device"] = _device_name(engine.device)
    return df


def _on_cuda(device: str) -> bool:
    import torch

    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def _device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
