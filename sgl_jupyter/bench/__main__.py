"""``python -m sgl_jupyter.bench NAME [options]``: run a benchmark, print its table, save JSON."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _offline(args) -> "object":
    from .offline import OfflineConfig, run

    return run(OfflineConfig(model_path=args.model_path, num_requests=args.num_requests, device=args.device,
                             dtype=args.dtype, load_format=args.load_format, hf_batch_size=args.hf_batch_size,
                             hf_generate_batch=args.hf_generate_batch))


def _constrained(args) -> "object":
    from .constrained import run_cli

    return run_cli(args)


BENCHES = {"offline": _offline, "constrained": _constrained}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sgl_jupyter.bench")
    p.add_argument("name", choices=sorted(BENCHES))
    p.add_argument("--model-path", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--load-format", default="auto")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--hf-batch-size", type=int, default=64)
    p.add_argument("--hf-generate-batch", action="store_true")
    p.add_argument("--out", default="bench_results", help="directory for the JSON result")
    args = p.parse_args(argv)
    df = BENCHES[args.name](args)
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(df.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.name}.json"
    path.write_text(json.dumps(df.to_dict(orient="records"), indent=2, ensure_ascii=False))
    print(f"saved {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
