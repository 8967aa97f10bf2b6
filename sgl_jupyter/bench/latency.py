"""bs=1 latency: time to first token and decode tokens/s for one request (input 128 / output 128 by
default), against HF transformers in the same process and against the memory roofline.

The roofline is what a bs=1 decode step cannot beat: every weight byte is read once per token, so
tokens/s <= HBM bandwidth / weight bytes. The bandwidth is measured here, by a large device-to-device
copy (bytes read + written over time), not taken from a datasheet. Peers (``--peers``):
- ``hf``: ``model.generate`` with the default dynamic cache;
- ``hf_static``: ``cache_implementation="static"`` + ``CompileConfig(mode="max-autotune-no-cudagraphs")``,
  the strongest plain-HF path (compiles for minutes the first time);
- ``unfused``: this engine again with its decode fusions off (GEMV norm / SiLU*mul prologues, RoPE + KV
  store), so what they are worth is measured in the same run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd
import torch

from sgl_jupyter.kernels.fusions import decode_fusions

CONFIGS = Path(__file__).with_name("configs")
SHAPES = {"llama3-8b": CONFIGS / "llama3_8b", "qwen2-7b": CONFIGS / "qwen2_7b"}


def resolve_model_path(path: Optional[str]) -> Optional[str]:
    """``llama3-8b`` / ``qwen2-7b`` name the shipped configs (for ``load_format="dummy"``)."""
    return str(SHAPES[path]) if path in SHAPES else path


def cuda_time_ms(fn, iters: int = 50, warmup: int = 3) -> float:
    """Mean milliseconds of ``fn()`` on the current CUDA stream, back to back (CUDA events, no host gaps)."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def copy_bandwidth(device: torch.device, nbytes: int = 2 * 2**30, iters: int = 20) -> float:
    """Bytes/s of a device-to-device copy, counting bytes read and written (the convention of the roofline)."""
    if torch.device(device).type != "cuda":
        raise ValueError("the roofline needs a CUDA device")
    src = torch.empty(nbytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    with torch.cuda.device(device):
        seconds = cuda_time_ms(lambda: dst.copy_(src), iters) / 1e3
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / seconds


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@dataclass
class LatencyConfig:
    model_path: Optional[str] = None
    load_format: str = "auto"
    dtype: str = "auto"
    device: str = "auto"
    input_len: int = 128
    output_len: int = 128
    trials: int = 3
    peers: tuple[str, ...] = ("hf",)
    engine_kwargs: dict = field(default_factory=dict)


def _engine_trial(engine, ids: list[int], output_len: int) -> dict:
    """TTFT is the engine's own (request arrival to first sampled token, ``meta_info["ttft"]``): a
    streamed chunk may carry no text yet (random weights, half a character), so it cannot time it."""
    params = {"max_new_tokens": output_len, "temperature": 0, "ignore_eos": True}
    t0 = time.perf_counter()
    out = engine.generate(input_ids=ids, sampling_params=params)
    total = time.perf_counter() - t0
    n = out["meta_info"]["completion_tokens"]
    ttft = out["meta_info"]["ttft"]
    return {"ttft_ms": ttft * 1e3, "tokens": n, "seconds": total,
            "decode_tok_per_s": (n - 1) / max(total - ttft, 1e-9)}


class _FirstTokenTimer:
    """A transformers streamer that notes when the first generated token arrives (TTFT for HF)."""

    def __init__(self):
        self.t_first: Optional[float] = None
        self._calls = 0

    def put(self, value) -> None:
        self._calls += 1
        if self._calls == 2 and self.t_first is None:  # the first put() is the prompt
            self.t_first = time.perf_counter()

    def end(self) -> None:
        pass


def _hf_trial(model, ids: list[int], output_len: int, **gen_kwargs) -> dict:
    x = torch.tensor([ids], device=model.device)
    timer = _FirstTokenTimer()
    torch.cuda.synchronize() if model.device.type == "cuda" else None
    t0 = time.perf_counter()
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=output_len, min_new_tokens=output_len,
                         do_sample=False, streamer=timer, pad_token_id=0, **gen_kwargs)
    torch.cuda.synchronize() if model.device.type == "cuda" else None
    total = time.perf_counter() - t0
    n = out.shape[1] - x.shape[1]
    ttft = (timer.t_first or t0) - t0
    return {"ttft_ms": ttft * 1e3, "tokens": n, "seconds": total,
            "decode_tok_per_s": (n - 1) / max(total - ttft, 1e-9)}


def _best(trials: list[dict]) -> dict:
    return max(trials, key=lambda r: r["decode_tok_per_s"])


def _engine_rows(cfg: LatencyConfig, model_path, ids_fn, kwargs: dict, label: str, bar) -> tuple[dict, dict]:
    """Best of ``cfg.trials`` for one engine configuration; also (info, engine facts) for the table's attrs."""
    from sgl_jupyter import Engine

    engine = Engine(model_path, load_format=cfg.load_format, dtype=cfg.dtype, device=cfg.device, **kwargs)
    try:
        ids = ids_fn(engine)
        facts = {"model_path": engine.args.model_path, "wbytes": weight_bytes(engine.loaded.model),
                 "device": engine.device, "dtype": engine.loaded.dtype, "ids": ids}
        _engine_trial(engine, ids, 8)  # warm-up (Triton jit, cuBLAS heuristics)
        bar.update()
        trials = []
        for _ in range(cfg.trials):
            engine.flush_cache()
            trials.append(_engine_trial(engine, ids, cfg.output_len))
            bar.update()
        info = {"attention": engine.attention_backend, "cuda_graphs": engine.runner.graphs is not None,
                "cpu_fused_decode": getattr(engine.runner, "cpu_decode", None) is not None}
        return {"system": label, **_best(trials)}, {**info, **facts}
    finally:
        engine.shutdown()
        del engine
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _say(row: dict) -> None:
    """One measured row as soon as it exists (a long GPU run that dies later still shows it)."""
    print(f"[latency] {row['system']}: {row['decode_tok_per_s']:.1f} decode tok/s, TTFT {row['ttft_ms']:.1f} ms",
          flush=True)


def run(cfg: LatencyConfig, progress: bool = True) -> pd.DataFrame:
    """The dense engine first; with ``quantization`` in ``engine_kwargs`` the quantized engine beside it in the same
    run (same prompt ids), and with ``quantization="gguf"`` on the CPU also llama.cpp on the same GGUF file when
    ``llama_cpp`` is importable (same thread count). ``engine_vs``: the dense engine over each row;
    ``quant_vs``: the quantized engine over each row."""
    from tqdm.auto import tqdm

    from . import llama_cpp_peer
    from .hf_peers import load_hf

    model_path = resolve_model_path(cfg.model_path)
    kwargs = {"max_total_tokens": 16384, "max_running_requests": 8, **cfg.engine_kwargs}
    quant = kwargs.pop("quantization", None)
    peers = list(cfg.peers) + (["llama_cpp"] if quant == "gguf" and llama_cpp_peer.available() else [])
    g = torch.Generator().manual_seed(0)
    ids_fn = lambda eng: torch.randint(100, min(eng.vocab_size, 32000), (cfg.input_len,), generator=g).tolist()
    steps = (2 if quant else 1) * (cfg.trials + 1) + (len(peers) + ("llama_cpp" in peers)) * (cfg.trials + 1)
    bar = tqdm(total=steps, desc="latency", disable=not progress)
    row, info = _engine_rows(cfg, model_path, ids_fn, kwargs, "sgl_jupyter engine", bar)
    rows: list[dict] = [row]
    ids, model_path, wbytes = info.pop("ids"), info.pop("model_path"), info.pop("wbytes")
    device, dtype = info.pop("device"), info.pop("dtype")
    roofs: list[tuple[str, int]] = [("", wbytes)]  # (variant, weight bytes) per engine row, in row order
    _say(row)
    if quant:
        try:
            qrow, qinfo = _engine_rows(cfg, model_path, lambda eng: ids, {**kwargs, "quantization": quant},
                                       f"sgl_jupyter engine ({quant})", bar)
        except Exception:  # noqa: BLE001 - the dense row and the peers still stand; the log has the traceback
            import traceback

            traceback.print_exc()
            quant = None
        else:
            _say(qrow)
            rows.append(qrow)
            roofs.append((quant, qinfo["wbytes"]))
            info["quantized_fused_decode"] = qinfo["cpu_fused_decode"]
    urow = None
    if "unfused" in peers:  # the dense engine again with the decode fusions off: what they are worth, same run
        with decode_fusions(False):
            urow, _ = _engine_rows(cfg, model_path, lambda eng: ids, kwargs, "sgl_jupyter engine (no decode fusions)",
                                   bar)
        _say(urow)
        rows.append(urow)
        peers.remove("unfused")
    if "llama_cpp" in peers:
        from sgl_jupyter.engine.gguf_blocks import find_gguf_for

        # ggml's threads spin at each op's barrier: on a loaded machine 1 thread can beat 2, so both are shown
        for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
            llm = llama_cpp_peer.load(find_gguf_for(model_path), threads, n_ctx=cfg.input_len + cfg.output_len + 16)
            llama_cpp_peer.trial(llm, ids, 8)
            bar.update()
            trials = [llama_cpp_peer.trial(llm, ids, cfg.output_len) for _ in range(cfg.trials)]
            bar.update(cfg.trials)
            rows.append({"system": f"llama.cpp (same GGUF, {threads} thread{'s' * (threads > 1)})", **_best(trials)})
            del llm
        peers.remove("llama_cpp")
    cfg = LatencyConfig(**{**cfg.__dict__, "peers": tuple(peers)})
    if cfg.peers:
        from transformers import CompileConfig

        hf = load_hf(model_path, str(device), dtype, cfg.load_format)
        for peer in cfg.peers:
            extra = {}
            if peer == "hf_static":
                extra = {"cache_implementation": "static",
                         "compile_config": CompileConfig(mode="max-autotune-no-cudagraphs")}
            elif peer != "hf":
                raise ValueError(f"unknown peer {peer!r}; choose hf, hf_static, unfused")
            _hf_trial(hf, ids, 8, **extra)  # warm-up (and the compile, for hf_static)
            bar.update()
            trials = []
            for _ in range(cfg.trials):
                trials.append(_hf_trial(hf, ids, cfg.output_len, **extra))
                bar.update()
            name = "HF generate" if peer == "hf" else "HF static cache + torch.compile"
            rows.append({"system": name, **_best(trials)})
            _say(rows[-1])
        del hf
    bar.close()
    if device.type == "cuda":
        bw = copy_bandwidth(device)
        if urow is not None:  # the dense engine without its fusions reads the dense weights
            urow["of_roofline"] = urow["decode_tok_per_s"] * wbytes / bw
        for i, (variant, nbytes) in enumerate(roofs):  # engine rows come first, in the order of roofs
            rows[i]["of_roofline"] = rows[i]["decode_tok_per_s"] * nbytes / bw
            rows.append({"system": f"roofline{' ' + variant if variant else ''} ({nbytes / 1e9:.2f} GB weights / "
                                   f"{bw / 1e12:.2f} TB/s copy)", "ttft_ms": float("nan"), "tokens": cfg.output_len,
                         "seconds": float("nan"), "decode_tok_per_s": bw / nbytes})
    df = pd.DataFrame(rows)
    ours = df.loc[0, "decode_tok_per_s"]
    df["engine_vs"] = ours / df["decode_tok_per_s"]  # the (dense) engine's decode speed over this row's
    df.attrs.update({"model": cfg.model_path, "dtype": str(dtype), "device": str(device), "weight_bytes": wbytes,
                     "input_len": cfg.input_len, "output_len": cfg.output_len, "threads": torch.get_num_threads(),
                     "quantization": quant, **info})
    if quant:
        df["quant_vs"] = df.loc[1, "decode_tok_per_s"] / df["decode_tok_per_s"]
        df.attrs[f"{quant}_vs_dense"] = df.loc[1, "decode_tok_per_s"] / ours
    return df


def plot(df: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh(df["system"], df["decode_tok_per_s"], color=["C0"] + ["C7"] * (len(df) - 1))
    ax.set_xlabel("bs=1 decode tokens/s")
    ax.invert_yaxis()
    ax.set_title(f"decode latency: {df.attrs.get('model', '')}")
    fig.tight_layout()
    return fig


def run_cli(args) -> pd.DataFrame:
    peers = tuple(p for p in (args.peers or "hf").split(",") if p)
    return run(LatencyConfig(model_path=args.model_path, load_format=args.load_format, dtype=args.dtype,
                             device=args.device, input_len=args.input_len, output_len=args.output_len,
                             peers=peers, engine_kwargs=getattr(args, "engine_kwargs", {})))
