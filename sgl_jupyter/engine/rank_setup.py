"""What a rank builds on its device once its weights are loaded: the KV pool and request table
sized for its memory, the attention backends and the model runner (with decode CUDA graphs).
The single-process engine is rank 0 of 1; tensor-parallel workers call the same code, so every
rank has the same pool size, table shape, backends and captured graphs."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .attention import create_attention_backend
from .config import EngineArgs
from .distributed.parallel_state import local_attention_heads
from .errors import KVCacheOOMError
from .kv_pool import KVPool, ReqToTokenPool, kv_bytes_per_token, kv_cache_torch_dtype
from .loader import LoadedModel
from .model_runner import ModelRunner

logger = logging.getLogger(__name__)

DEFAULT_DECODE_STEPS = 4  # greedy decode steps per graph launch (--num-continuous-decode-steps)


@dataclass
class RankState:
    kv_pool: KVPool
    req_pool: ReqToTokenPool
    runner: ModelRunner
    max_context: int
    max_running: int
    attn_dims: tuple[int, int, int]  # this rank's (query heads, KV heads, head_dim)


def kv_capacity(args: EngineArgs, loaded: LoadedModel, tp_size: int = 1) -> int:
    """KV slots (tokens) this rank can hold: ``max_total_tokens``, else what its memory budget allows."""
    cfg, device = loaded.hf_config, loaded.device
    _, kv_heads, head_dim = local_attention_heads(cfg, tp_size)
    kv_dtype = kv_cache_torch_dtype(args.kv_cache_dtype, loaded.dtype)
    per_token = kv_bytes_per_token(cfg.num_hidden_layers, kv_heads, head_dim, kv_dtype)  # fp8: half of bf16
    if args.max_total_tokens is not None:
        return args.max_total_tokens
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        frac = args.gpu_mem_fraction()
        budget = free - total * (1 - frac)
        if budget < per_token * 256:
            raise KVCacheOOMError(
                f"not enough GPU memory left for the KV cache after loading the weights "
                f"({free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB): raise --mem-fraction-static "
                f"(now {frac}), lower --max-total-tokens, or use a smaller model / --tp-size > 1")
        return int(budget // per_token)
    return int(args.cpu_kv_budget_gb * (args.mem_fraction_static or 1.0) * 2**30 // per_token)


def use_cuda_graphs(args: EngineArgs, device: torch.device, attention_backend: str) -> bool:
    if device.type != "cuda" or args.disable_cuda_graph:
        return False
    if attention_backend == "torch":
        logger.warning("CUDA graphs need the triton or flashinfer attention backend; running decode eagerly")
        return False
    return True


def build_rank(args: EngineArgs, loaded: LoadedModel, size: int, attention_backend: str, tp_size: int = 1,
               req_pool_cls: type = ReqToTokenPool, progress: bool = True) -> RankState:
    """KV pool of ``size`` tokens, request table, backends and runner; captures decode CUDA graphs."""
    cfg, device = loaded.hf_config, loaded.device
    heads, kv_heads, head_dim = local_attention_heads(cfg, tp_size)
    ctx = args.context_length or getattr(cfg, "max_position_embeddings", 4096)
    max_context = int(min(ctx, size))
    default_running = 512 if device.type == "cuda" else 128  # = the default cuda_graph_max_bs
    max_running = int(args.max_running_requests or min(default_running, max(size // 16, 1)))
    kv_dtype = kv_cache_torch_dtype(args.kv_cache_dtype, loaded.dtype)
    kv_pool = KVPool(size, cfg.num_hidden_layers, kv_heads, head_dim, kv_dtype, device)
    req_pool = req_pool_cls(max_running + 8, max_context + 1, device)

    def backend(name: str):
        return create_attention_backend(name, num_q_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                                        device=device, kv_pool=kv_pool, req_to_token=req_pool, max_bs=max_running)

    graphs = use_cuda_graphs(args, device, attention_backend)
    # Under CUDA graphs decode needs a graph-safe backend: FlashInfer's plan() runs on the host each
    # step, so a FlashInfer engine decodes with the Triton split-KV kernel (prefill stays FlashInfer).
    decode = backend("triton") if graphs and attention_backend == "flashinfer" else None
    runner = ModelRunner(loaded, kv_pool, req_pool, backend(attention_backend), decode)
    if graphs:
        max_bs = min(args.cuda_graph_max_bs, max_running)
        try:
            runner.capture_cuda_graphs(max_bs, progress=progress)
            steps = args.num_continuous_decode_steps or DEFAULT_DECODE_STEPS
            if steps > 1 and tp_size == 1:  # TP ranks replay one step per broadcast batch, in lockstep
                runner.capture_multi_step(steps, max_bs, progress=progress)
        except torch.OutOfMemoryError as e:
            runner.graphs = None
            raise KVCacheOOMError(
                f"out of GPU memory capturing decode CUDA graphs for up to {max_bs} rows after a KV cache of "
                f"{size} tokens ({kv_pool.bytes_per_token() * size / 2**30:.1f} GiB): lower --mem-fraction-static "
                f"(now {args.gpu_mem_fraction()}) to leave room for activations, or lower "
                "--cuda-graph-max-bs / --max-running-requests, or --disable-cuda-graph") from e
    return RankState(kv_pool, req_pool, runner, max_context, max_running, (heads, kv_heads, head_dim))
