"""Quantized weights against dense ones in one run: perplexity of a fixed passage (``passage.TEXT``, ~1.8k
tokens, scored by the engine's own prompt logprobs) and greedy agreement (the first ``new_tokens`` tokens
identical) on prompts cut from the same passage.

Why both: perplexity averages small logit errors; greedy agreement shows whether they flip choices, which a
user notices first. For ``fp8`` a third row keeps every batch weight-only (``act_quant_min_tokens`` raised),
separating the weight rounding from the per-token activation rounding of the large-batch path (the ~1.8k
prompt tokens are one such batch). On CPU, where fp8 cannot run, the quantized rows use the method's
reference (the same rounded weights and, from ``act_quant_min_tokens`` rows, rounded activations; float32 math).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd


@dataclass
class AccuracyConfig:
    model_path: Optional[str] = None
    device: str = "auto"
    dtype: str = "auto"
    load_format: str = "auto"
    quantization: str = "fp8"
    num_prompts: int = 32
    prompt_tokens: int = 24
    new_tokens: int = 16
    engine_kwargs: dict = field(default_factory=dict)


def perplexity(engine, ids: list[int]) -> float:
    out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 1, "temperature": 0},
                          return_logprob=True, logprob_start_len=0)
    lps = [x[0] for x in out["meta_info"]["input_token_logprobs"][1:]]  # the first token has no context
    return math.exp(-sum(lps) / len(lps))


def prompts_from(ids: list[int], n: int, length: int) -> list[list[int]]:
    """``n`` windows of ``length`` tokens spread evenly over ``ids``."""
    stride = max(1, (len(ids) - length) // n)
    return [ids[i * stride:i * stride + length] for i in range(n)]


def greedy(engine, prompts: list[list[int]], n: int) -> list[list[int]]:
    outs = engine.generate(input_ids=prompts, sampling_params={"max_new_tokens": n, "temperature": 0,
                                                               "ignore_eos": True})
    return [o["output_ids"] for o in outs]


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _quantize_reference(engine, name: str) -> None:
    """CPU: swap the loaded dense layers to ``name``'s dequantizing reference (``check`` refuses CPU)."""
    from sgl_jupyter.engine.quantization import get_method, linear_layers

    method = get_method(name)
    for prefix, layer in linear_layers(engine.loaded.model):
        layer.prefix, layer.quant_method = prefix, method
        method.process_weights_after_loading(layer)


def _variant(cfg: AccuracyConfig, quantization: Optional[str], weight_only: bool, text: str) -> dict:
    from sgl_jupyter import Engine
    from sgl_jupyter.engine.quantization.fp8 import Fp8LinearMethod

    kwargs = {"max_running_requests": cfg.num_prompts, **cfg.engine_kwargs}
    cpu = cfg.device == "cpu" or (cfg.device == "auto" and not _cuda())
    saved = Fp8LinearMethod.act_quant_min_tokens
    if weight_only:
        Fp8LinearMethod.act_quant_min_tokens = sys.maxsize
    try:
        engine = Engine(cfg.model_path, device=cfg.device, dtype=cfg.dtype, load_format=cfg.load_format,
                        quantization=None if cpu else quantization, **kwargs)
        try:
            if cpu and quantization:
                _quantize_reference(engine, quantization)
            ids = engine.tokenizer.encode(text, add_special_tokens=False)
            prompts = prompts_from(ids, cfg.num_prompts, cfg.prompt_tokens)
            return {"ppl": perplexity(engine, ids), "outs": greedy(engine, prompts, cfg.new_tokens),
                    "tokens": len(ids), "device": str(engine.device), "dtype": str(engine.loaded.dtype)}
        finally:
            engine.shutdown()
    finally:
        Fp8LinearMethod.act_quant_min_tokens = saved


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(cfg: AccuracyConfig, progress: bool = False) -> pd.DataFrame:
    from .passage import TEXT

    variants = [("dense", None, False), (cfg.quantization, cfg.quantization, False)]
    if cfg.quantization == "fp8":
        variants.append(("fp8 (weight-only)", "fp8", True))
    rows, dense = [], None
    for label, quant, weight_only in variants:
        r = _variant(cfg, quant, weight_only, TEXT)
        dense = dense or r
        agree = sum(a == b for a, b in zip(r["outs"], dense["outs"]))
        rows.append({"system": label, "device": r["device"], "dtype": r["dtype"], "ppl": r["ppl"],
                     "ppl_vs_dense": r["ppl"] / dense["ppl"] - 1, "greedy_agree": agree,
                     "prompts": len(r["outs"]), "mean_common_prefix": sum(
                         common_prefix(a, b) for a, b in zip(r["outs"], dense["outs"])) / len(r["outs"])})
    df = pd.DataFrame(rows)
    df.attrs.update({"passage_tokens": dense["tokens"], "new_tokens": cfg.new_tokens})
    return df


def headline(df: pd.DataFrame) -> str:
    q = df.iloc[1]
    return (f"{q.system}: perplexity {q.ppl_vs_dense:+.2%} vs dense over {df.attrs.get('passage_tokens')} tokens; "
            f"first-{df.attrs.get('new_tokens')}-token greedy agreement {int(q.greedy_agree)}/{int(q.prompts)}")


def run_cli(args) -> pd.DataFrame:
    df = run(AccuracyConfig(model_path=args.model_path, device=args.device, dtype=args.dtype,
                            load_format=args.load_format, quantization=args.quantization or "fp8",
                            engine_kwargs={k: v for k, v in args.engine_kwargs.items() if k != "quantization"}))
    print(headline(df))
    return df
