"""``python -m sgl_jupyter.bench NAME [options]``: run a benchmark, print its table, save JSON."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from ..engine.config import ATTENTION_BACKENDS, KV_CACHE_DTYPES


def _offline(args) -> "object":
    from .latency import resolve_model_path
    from .offline import OfflineConfig, run

    return run(OfflineConfig(model_path=resolve_model_path(args.model_path), num_requests=args.num_requests, device=args.device,
                             dtype=args.dtype, load_format=args.load_format, hf_batch_size=args.hf_batch_size,
                             hf_generate_batch=args.hf_generate_batch, engine_kwargs=args.engine_kwargs))


def _module_cli(module: str):
    return lambda args: importlib.import_module(f"sgl_jupyter.bench.{module}").run_cli(args)


BENCHES = {"offline": _offline, "latency": _module_cli("latency"), "constrained": _module_cli("constrained"),
           "multiturn": _module_cli("multiturn"), "throughput": _module_cli("throughput"),
           "structured": _module_cli("structured"), "serving": _module_cli("serving"),
           "sharegpt": _module_cli("sharegpt"), "accuracy": _module_cli("accuracy"), "router": _module_cli("router")}
# benches whose rows are per request: print (and also save) their summary table instead
SUMMARIES = {"multiturn": ("multiturn", "summary"), "throughput": ("throughput", "pivot"),
             "structured": ("structured", "summary"), "router": ("router", "summary")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sgl_jupyter.bench")
    p.add_argument("name", choices=sorted(BENCHES))
    p.add_argument("--model-path", default=None, help="HF directory, or llama3-8b / qwen2-7b (shipped configs, "
                                                     "with --load-format dummy)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--load-format", default="auto", help="dummy: random weights from the model's config.json")
    p.add_argument("--tokenizer-path", default=None, help="tokenizer directory, when the model's has none (the "
                                                         "shipped configs; default: the embedded model's)")
    p.add_argument("--quantization", default=None, help="weights of every linear layer: a name from "
                                                       "sgl_jupyter.engine.quantization (default: dense --dtype)")
    p.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES,
                   help="KV cache element type (fp8_e4m3: half the bytes of bf16; the engine's own choices)")
    p.add_argument("--attention-backend", default="auto", choices=ATTENTION_BACKENDS,
                   help="the engine's attention backend")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--hf-batch-size", type=int, default=64)
    p.add_argument("--hf-generate-batch", action="store_true")
    g = p.add_argument_group("multiturn")
    g.add_argument("--num-users", type=int, default=None)
    g.add_argument("--num-turns", type=int, default=None)
    g.add_argument("--system-tokens", type=int, default=None)
    g.add_argument("--user-tokens", type=int, default=None)
    g.add_argument("--answer-tokens", type=int, default=None)
    g = p.add_argument_group("throughput")
    g.add_argument("--batch-sizes", default=None, help="comma-separated, e.g. 1,2,4,8,16")
    g.add_argument("--max-new-tokens", type=int, default=None)
    g = p.add_argument_group("latency")
    g.add_argument("--input-len", type=int, default=128)
    g.add_argument("--output-len", type=int, default=128)
    g.add_argument("--peers", default=None, help="latency: comma-separated peers: hf, hf_static (HF), unfused (the "
                                                "engine without its decode fusions)")
    p.add_argument("--url", default=None, help="serving: the server's base URL")
    g = p.add_argument_group("sharegpt / serving --request-rates (ShareGPT-like lengths)")
    g.add_argument("--modes", default=None, help="sharegpt: comma-separated greedy,sampled")
    g.add_argument("--hf-subset", type=int, default=0, help="sharegpt: requests of the HF generate_batch peer")
    g.add_argument("--json-requests", type=int, default=0, help="sharegpt: JSON-schema batch size (0: skip)")
    g.add_argument("--max-input", type=int, default=None, help="clip input lengths (small CPU runs)")
    g.add_argument("--max-output", type=int, default=None, help="clip output lengths (small CPU runs)")
    g.add_argument("--request-rates", default=None, help="serving: comma-separated Poisson rates (req/s; inf: all "
                                                          "at once); starts an engine and its server in process")
    p.add_argument("--out", default="bench_results", help="directory for the JSON result")
    args = p.parse_args(argv)
    from .latency import resolve_model_path

    args.model_path = resolve_model_path(args.model_path)
    args.engine_kwargs = {"tokenizer_path": args.tokenizer_path} if args.tokenizer_path else {}
    if args.quantization:
        args.engine_kwargs["quantization"] = args.quantization
    if args.kv_cache_dtype != "auto":
        args.engine_kwargs["kv_cache_dtype"] = args.kv_cache_dtype
    if args.attention_backend != "auto":
        args.engine_kwargs["attention_backend"] = args.attention_backend
    df = BENCHES[args.name](args)
    import pandas as pd

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.name}.json"
    path.write_text(json.dumps(df.to_dict(orient="records"), indent=2, ensure_ascii=False, default=str))
    table, headline = df, None
    if args.name in SUMMARIES:
        module_name, fn = SUMMARIES[args.name]
        module = importlib.import_module(f"sgl_jupyter.bench.{module_name}")
        table = getattr(module, fn)(df)
        headline = module.headline(table) if hasattr(module, "headline") else None
        attrs = {k: v.item() if hasattr(v, "item") else v for k, v in table.attrs.items()}  # numpy -> JSON
        (out / f"{args.name}_summary.json").write_text(json.dumps(
            {"table": json.loads(table.reset_index().to_json(orient="records")), "attrs": attrs,
             "headline": headline}, indent=2, ensure_ascii=False, default=str))
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.to_string(float_format=lambda x: f"{x:.3f}"))
    if headline:
        print(headline)
    print(f"saved {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
