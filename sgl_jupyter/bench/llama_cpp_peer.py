"""llama.cpp (``llama-cpp-python``) as a CPU peer: the same GGUF file the engine packs, the same prompt ids,
greedy, a fixed number of new tokens, the same thread count. Optional: ``available()`` says whether it runs.
Install: ``CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python`` (builds llama.cpp from source, ~10+
minutes on 2 cores)."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def load(gguf: Path, threads: int, n_ctx: int = 2048):
    from llama_cpp import Llama

    return Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512,
                 verbose=False, logits_all=False)


def trial(llm, ids: list[int], output_len: int) -> dict:
    """One greedy generation of ``output_len`` tokens (EOS ignored: generation stops only at the count)."""
    llm.reset()
    n, t_first = 0, None
    t0 = time.perf_counter()
    for _ in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        n += 1
        if n == 1:
            t_first = time.perf_counter()
        if n >= output_len:
            break
    total = time.perf_counter() - t0
    ttft = (t_first or t0) - t0
    return {"ttft_ms": ttft * 1e3, "tokens": n, "seconds": total,
            "decode_tok_per_s": (n - 1) / max(total - ttft, 1e-9)}
