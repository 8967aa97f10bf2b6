"""What ``Engine.get_server_info`` (and the server's ``/get_server_info``) reports."""
from __future__ import annotations


def server_info(engine) -> dict:
    """The engine's state for ``Engine.get_server_info`` (read from any thread: counters, not locks)."""
    s, pool, cache = engine.scheduler, engine.kv_pool, engine.cache
    evictable, protected = cache.evictable_size, cache.protected_size
    return {
        "model_path": engine.args.model_path,
        "served_model_name": engine.args.served_model_name or engine.args.model_path,
        "args": engine.args.to_dict(),
        "device": str(engine.device),
        "dtype": str(engine.loaded.dtype).removeprefix("torch."),
        "num_params": engine.loaded.num_params,
        "attention_backend": engine.attention_backend,
        "max_total_num_tokens": pool.size,
        "max_context_length": engine.max_context,
        "max_running_requests": engine.max_running,
        "kv": {"total": pool.size, "free": pool.free_size, "evictable": evictable, "protected": protected,
               "used": pool.size - pool.free_size - evictable},
        "num_running_reqs": s.num_running,
        "num_queue_reqs": s.num_queued,
        "cache": cache.stats(),
        "cache_hit_rate": cache.hit_rate,
        "radix_cache": not engine.args.disable_radix_cache,
        "token_throughput": s.tokens_per_s(),
        "num_finished_reqs": s.num_finished,
        "num_retracted_reqs": s.num_retracted,
        "prompt_tokens_total": s.prompt_tokens_total,
        "generation_tokens_total": s.generation_tokens_total,
        "cached_tokens_total": s.cached_tokens_total,
        "extend_tokens_total": s.extend_tokens_total,
        "forward_calls": engine.runner.forward_calls,
        "constrained_decoding": _constrained_available(),
        "load_time_s": engine.load_time_s,
        "version": __import__("sgl_jupyter").__version__,
    }


def _constrained_available() -> bool:
    try:
        from . import constrained  # noqa: F401

        return hasattr(constrained, "GrammarBackend")
    except Exception:  # noqa: BLE001
        return False
