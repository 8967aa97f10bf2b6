"""HF transformers peers, run in the same process on the same weights and prompts."""
from __future__ import annotations

import time
from typing import Optional

import torch


def load_hf(model_path: str, device: str, dtype: torch.dtype, load_format: str = "auto"):
    from transformers import AutoConfig, AutoModelForCausalLM

    if load_format == "dummy":
        cfg = AutoConfig.from_pretrained(model_path)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
    return model.eval()


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def hf_padded_generate(model, tokenizer, prompts: list[str], max_new_tokens: list[int], batch_size: int,
                       progress=None) -> dict:
    """HF ``generate`` on left-padded batches; a batch runs until its longest request is done
    (HF has no per-request lengths), but only each request's own tokens are counted."""
    device = model.device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    useful = 0
    _sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        lens = max_new_tokens[i:i + batch_size]
        enc = [tokenizer.encode(p, add_special_tokens=False) for p in chunk]
        width = max(len(e) for e in enc)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc], device=device)
        model.generate(ids, attention_mask=mask, max_new_tokens=max(lens), min_new_tokens=max(lens),
                       do_sample=False, pad_token_id=pad)
        useful += sum(lens)
        if progress is not None:
            progress.update(len(chunk))
    _sync(device)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "tokens": useful, "tok_per_s": useful / dt}


@torch.no_grad()
def hf_generate_batch(model, tokenizer, prompts: list[str], max_new_tokens: list[int]) -> Optional[dict]:
    """HF's continuous-batching ``generate_batch`` (transformers >= 4.56); None when unavailable."""
    if not hasattr(model, "generate_batch"):
        return None
    from transformers import GenerationConfig

    enc = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    cfg = GenerationConfig(max_new_tokens=max(max_new_tokens), do_sample=False, eos_token_id=-1,
                           pad_token_id=tokenizer.pad_token_id or 0)
    extra = {}
    if model.device.type == "cpu":
        extra = _cpu_cache_config(sum(len(e) for e in enc) + len(enc) * max(max_new_tokens), len(enc))
    _sync(model.device)
    t0 = time.perf_counter()
    model.generate_batch(inputs=enc, generation_config=cfg, progress_bar=False, **extra)
    _sync(model.device)
    dt = time.perf_counter() - t0
    # one max_new_tokens for all (no per-request lengths): count only each request's own tokens, as for
    # the padded peer, so tokens/s compares the same work
    tokens = sum(max_new_tokens)
    return {"seconds": dt, "tokens": tokens, "tok_per_s": tokens / dt}


def _cpu_cache_config(total_tokens: int, num_requests: int, page_size: int = 64) -> dict:
    """A paged cache sized to the workload. HF sizes it from free memory, which on CPU means a multi-GB
    cache and an 8192-token batch whose attention mask costs seconds a step; our engine gets
    max_total_tokens the same way."""
    try:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
    except ImportError:  # transformers < 5: no such knob
        return {}
    blocks = -(-total_tokens // page_size) + num_requests
    return {"continuous_batching_config": ContinuousBatchingConfig(
        num_blocks=blocks, max_batch_tokens=min(2048, total_tokens), page_size=page_size)}
