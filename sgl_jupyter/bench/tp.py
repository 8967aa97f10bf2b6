"""bs=1 decode speed with and without tensor parallelism: the same model (by default the dummy
Llama-3-8B shape) at TP=1 and TP=N, one request of ``--input-len`` prompt tokens decoding
``--output-len`` tokens, best of ``--trials``; prints both tokens/s and their ratio.

    python -m sgl_jupyter.bench.tp --tp-size 2                 # llama3-8b shape, dummy weights, CUDA
    python -m sgl_jupyter.bench.tp --model-path /path/to/hf --load-format auto --tp-size 2
"""
from __future__ import annotations

import argparse
import gc
import json
from typing import Optional, Sequence

import torch

from .latency import _engine_trial, resolve_model_path


def decode_tok_per_s(tp_size: int, model_path: str, load_format: str, dtype: str, device: str, input_len: int,
                     output_len: int, trials: int, disable_cuda_graph: bool = False) -> float:
    from sgl_jupyter import Engine

    engine = Engine(model_path, load_format=load_format, dtype=dtype, device=device, tp_size=tp_size,
                    max_total_tokens=4 * (input_len + output_len), max_running_requests=4, cuda_graph_max_bs=4,
                    disable_cuda_graph=disable_cuda_graph)
    try:
        ids = torch.randint(100, min(engine.vocab_size, 32000), (input_len,),
                            generator=torch.Generator().manual_seed(0)).tolist()
        _engine_trial(engine, ids, 8)  # warm-up: Triton jit, cuBLAS and NCCL set-up
        best = 0.0
        for _ in range(trials):
            engine.flush_cache()
            best = max(best, _engine_trial(engine, ids, output_len)["decode_tok_per_s"])
        return best
    finally:
        engine.shutdown()
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m sgl_jupyter.bench.tp", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", default="llama3-8b", help="HF directory, or llama3-8b / qwen2-7b (shipped configs)")
    p.add_argument("--load-format", default="dummy")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--tp-size", type=int, default=2)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--disable-cuda-graph", action="store_true")
    a = p.parse_args(argv)
    common = dict(model_path=resolve_model_path(a.model_path), load_format=a.load_format, dtype=a.dtype,
                  device=a.device, input_len=a.input_len, output_len=a.output_len, trials=a.trials,
                  disable_cuda_graph=a.disable_cuda_graph)
    tp1 = decode_tok_per_s(1, **common)
    tpn = decode_tok_per_s(a.tp_size, **common)
    result = {"model": a.model_path, "input_len": a.input_len, "output_len": a.output_len,
              "tp1_tok_per_s": round(tp1, 2), f"tp{a.tp_size}_tok_per_s": round(tpn, 2),
              "speedup": round(tpn / tp1, 3)}
    print(f"bs=1 decode, {a.model_path}: TP=1 {tp1:.1f} tok/s, TP={a.tp_size} {tpn:.1f} tok/s, "
          f"ratio {tpn / tp1:.2f}x")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
