"""The main job on the embedded model, from a terminal: load the engine, answer in English and
Chinese (streamed), show timing and the prefix cache at work."""
from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sgl_jupyter.quickstart", description=__doc__)
    parser.add_argument("--model-path", default=None, help="HF model directory (default: the embedded SmolLM2)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--headless", action="store_true", help="no interactive front end (the terminal demo)")
    args = parser.parse_args(argv)

    from sgl_jupyter import Engine

    t0 = time.perf_counter()
    engine = Engine(args.model_path)
    info = engine.get_server_info()
    print(f"loaded {info['model_path']} on {info['device']} ({info['dtype']}, {info['num_params'] / 1e6:.0f}M "
          f"params, KV capacity {info['max_total_num_tokens']} tokens) in {time.perf_counter() - t0:.1f}s")
    questions = ["What is the capital of France? Answer in one sentence.", "请用一句话介绍你自己。"]
    for q in questions:
        prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                      add_generation_prompt=True)
        print(f"\n>>> {q}\n", end="", flush=True)
        t = time.perf_counter()
        last = None
        for chunk in engine.generate(prompt, {"max_new_tokens": args.max_new_tokens, "temperature": 0},
                                     stream=True):
            sys.stdout.write(chunk["delta"])
            sys.stdout.flush()
            last = chunk
        dt = time.perf_counter() - t
        meta = last["meta_info"]
        print(f"\n[{meta['completion_tokens']} tokens in {dt:.2f}s = {meta['completion_tokens'] / dt:.1f} tok/s, "
              f"TTFT {meta.get('ttft', 0) * 1000:.0f} ms, cached prompt tokens {meta['cached_tokens']}]")
    engine.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
