"""EngineArgs: every engine knob, with SGLang's ServerArgs names, validated in one place."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import InvalidRequestError

ATTENTION_BACKENDS = ("auto", "torch", "triton", "flashinfer")
DTYPES = ("auto", "float32", "bfloat16", "float16")
KV_CACHE_DTYPES = ("auto", "fp8_e4m3")  # auto: the model dtype (kv_pool.kv_cache_torch_dtype maps them)
LOAD_FORMATS = ("auto", "safetensors", "dummy")
SCHEDULE_POLICIES = ("lpm", "fcfs")

# Names used by other tools (the seed article says --max-num-sequences) mapped to ours.
ALIASES = {"max_num_sequences": "max_running_requests", "max_num_seqs": "max_running_requests"}


@dataclass
class EngineArgs:
    """Engine configuration. Field names follow SGLang's ServerArgs so users can move between the two."""

    model_path: Optional[str] = None  # None: the embedded SmolLM2 model
    tokenizer_path: Optional[str] = None
    load_format: str = "auto"
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    quantization: Optional[str] = None  # a name from engine.quantization (weights of every linear layer)
    kv_cache_dtype: str = "auto"  # auto: the model dtype; fp8_e4m3: 1 byte per element, scales 1.0
    device: str = "auto"  # auto: cuda if available else cpu
    trust_remote_code: bool = False
    context_length: Optional[int] = None
    # memory
    mem_fraction_static: Optional[float] = None  # of free device memory (CPU: of cpu_kv_budget_gb)
    max_total_tokens: Optional[int] = None  # KV pool size in tokens; overrides mem_fraction_static
    cpu_kv_budget_gb: float = 2.0
    # scheduling
    max_running_requests: Optional[int] = None
    max_queued_requests: Optional[int] = None  # None: unbounded
    chunked_prefill_size: Optional[int] = None  # None: 8192 on CUDA (SGLang's H100 size), 2048 on CPU
    max_prefill_tokens: int = 8192
    schedule_policy: str = "lpm"
    disable_radix_cache: bool = False
    disable_regex_jump_forward: bool = False
    # kernels
    attention_backend: str = "auto"
    disable_flashinfer: bool = False
    disable_cuda_graph: bool = False
    cuda_graph_max_bs: int = 512  # = the default max_running_requests on CUDA: full batches replay too
    num_continuous_decode_steps: Optional[int] = None  # None: 4 with CUDA graphs, else 1
    tp_size: int = 1
    random_seed: int = 0
    # observability
    log_level: str = "warning"
    served_model_name: Optional[str] = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "EngineArgs":
        """Build from keyword arguments, accepting aliases; unknown names are an error that lists the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        clean: dict[str, Any] = {}
        for key, value in kwargs.items():
            key = ALIASES.get(key, key)
            if key not in names:
                raise InvalidRequestError(
                    f"unknown engine argument {key!r}; valid arguments: {', '.join(sorted(names - {'extra'}))}"
                )
            clean[key] = value
        args = cls(**clean)
        args.validate()
        return args

    def validate(self) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise InvalidRequestError(msg)

        check(self.load_format in LOAD_FORMATS, f"load_format must be one of {LOAD_FORMATS}, got {self.load_format!r}")
        check(self.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        check(self.kv_cache_dtype in KV_CACHE_DTYPES,
              f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {self.kv_cache_dtype!r}")
        check(not (self.kv_cache_dtype != "auto" and self.attention_backend == "flashinfer"),
              f"kv_cache_dtype={self.kv_cache_dtype!r} runs on attention_backend 'triton' or 'torch', not "
              "'flashinfer' (leave it 'auto' to get triton on CUDA)")
        check(self.attention_backend in ATTENTION_BACKENDS,
              f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}")
        check(self.schedule_policy in SCHEDULE_POLICIES,
              f"schedule_policy must be one of {SCHEDULE_POLICIES}, got {self.schedule_policy!r}")
        if self.mem_fraction_static is not None:
            check(0.0 < self.mem_fraction_static < 1.0,
                  f"mem_fraction_static must be in (0, 1), got {self.mem_fraction_static}")
        if self.max_total_tokens is not None:
            check(self.max_total_tokens >= 16, f"max_total_tokens must be >= 16, got {self.max_total_tokens}")
        if self.max_running_requests is not None:
            check(self.max_running_requests >= 1,
                  f"max_running_requests must be >= 1, got {self.max_running_requests}")
        if self.max_queued_requests is not None:
            check(self.max_queued_requests >= 1, f"max_queued_requests must be >= 1, got {self.max_queued_requests}")
        check(self.chunked_prefill_size is None or self.chunked_prefill_size >= 16
              or self.chunked_prefill_size == -1,
              f"chunked_prefill_size must be >= 16 (or -1 to disable), got {self.chunked_prefill_size}")
        check(self.tp_size >= 1, f"tp_size must be >= 1, got {self.tp_size}")
        check(self.cuda_graph_max_bs >= 1, f"cuda_graph_max_bs must be >= 1, got {self.cuda_graph_max_bs}")
        check(self.num_continuous_decode_steps is None or 1 <= self.num_continuous_decode_steps <= 64,
              f"num_continuous_decode_steps must be in [1, 64], got {self.num_continuous_decode_steps}")
        check(self.cpu_kv_budget_gb > 0, f"cpu_kv_budget_gb must be > 0, got {self.cpu_kv_budget_gb}")
        if self.quantization is not None:
            from . import quantization

            check(self.quantization in quantization.names(),
                  f"quantization must be one of {quantization.names()} or None, got {self.quantization!r}")
        if self.disable_flashinfer and self.attention_backend == "flashinfer":
            raise InvalidRequestError("attention_backend='flashinfer' contradicts disable_flashinfer=True")

    def gpu_mem_fraction(self) -> float:
        """``mem_fraction_static`` on a GPU: the share of its memory that weights and the KV pool may take."""
        return self.mem_fraction_static or 0.85

    def prefill_chunk(self, device_type: str) -> int:
        """``chunked_prefill_size`` with its device default: big chunks keep a GPU's GEMMs at full speed and
        cost few host round trips; on a CPU smaller ones keep decode steps coming between them."""
        if self.chunked_prefill_size is not None:
            return self.chunked_prefill_size
        return 8192 if device_type == "cuda" else 2048

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
