"""The launch_server command line, built from ``EngineArgs`` so every engine knob is a flag with
SGLang's name (``--mem-fraction-static``, ``--max-running-requests`` alias ``--max-num-sequences``, ...),
plus the server's own (--host, --port, --api-key, --log-file). Unknown flags and bad values are
argparse errors that name the flag."""
from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from typing import Any, Optional, Sequence

from ..engine.config import (ATTENTION_BACKENDS, DTYPES, KV_CACHE_DTYPES, LOAD_FORMATS, SCHEDULE_POLICIES,
                             EngineArgs)
from ..engine.errors import InvalidRequestError

DEFAULT_HOST = "127.0.0.1"  # loopback unless asked: an open model server on a LAN is a choice, not a default
DEFAULT_PORT = 30000
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
SERVER_FIELDS = ("host", "port", "api_key", "log_file", "max_body_bytes", "dp_size", "router_policy", "ray_address")
ROUTER_POLICIES = ("cache-aware", "round-robin", "least-load")  # sgl_jupyter.cluster.policies.POLICIES
_SKIPPED = {"extra"}

_HELP = {
    "model_path": "HF model directory (config.json + *.safetensors + tokenizer). Default: the embedded "
                  "SmolLM2-135M-Instruct.",
    "tokenizer_path": "Tokenizer directory, if not the model's.",
    "load_format": "Weights format; 'dummy' = random weights from config.json.",
    "dtype": "Weights/activations dtype; auto = bfloat16 on CUDA, float32 on CPU.",
    "quantization": "Weights of every linear layer: fp8 = e4m3 with per-channel scales (NVIDIA GPUs with FP8: "
                    "Ada, Hopper, Blackwell; FP8 checkpoints load as fp8 without it). Default: dense --dtype.",
    "kv_cache_dtype": "KV cache element type; auto = the model dtype, fp8_e4m3 = 1 byte per element (scales 1.0): "
                      "twice the tokens in the same memory, attention on the triton (CUDA) or torch backend.",
    "device": "auto, cpu, cuda or cuda:N.",
    "trust_remote_code": "Allow custom model code from the model directory.",
    "context_length": "Override the model's context length.",
    "mem_fraction_static": "Fraction of free GPU memory for weights + KV cache (lower it on OOM).",
    "max_total_tokens": "KV-cache size in tokens (overrides --mem-fraction-static; lower it on OOM).",
    "cpu_kv_budget_gb": "KV-cache budget on CPU, GiB.",
    "max_running_requests": "Most requests decoded together (alias --max-num-sequences).",
    "max_queued_requests": "Most requests waiting beyond the running batch; more get HTTP 503 + Retry-After.",
    "chunked_prefill_size": "Prefill long prompts in chunks of this many tokens (-1: off; default 8192 on CUDA, "
                            "2048 on CPU).",
    "max_prefill_tokens": "Token budget of one prefill batch.",
    "schedule_policy": "lpm = longest prefix match first (radix-cache friendly), fcfs = arrival order.",
    "disable_radix_cache": "Do not reuse KV across requests (the no-prefix-cache baseline).",
    "attention_backend": "Attention kernels; auto picks flashinfer/triton on CUDA, torch on CPU.",
    "disable_flashinfer": "Never use FlashInfer (saves memory; slower first token).",
    "disable_cuda_graph": "Do not capture CUDA graphs for decode.",
    "cuda_graph_max_bs": "Largest decode batch captured as a CUDA graph.",
    "num_continuous_decode_steps": "Greedy decode steps per CUDA-graph launch for small batches (default 4 on "
                                   "CUDA; 1 = one step per launch). Output is unchanged; streams arrive in bursts.",
    "tp_size": "Tensor-parallel degree (GPUs).",
    "random_seed": "Seed of the sampler.",
    "disable_regex_jump_forward": "Decode grammar-forced text token by token instead of jumping forward.",
    "log_level": "Log level of the engine and the server.",
    "served_model_name": "Model name in /v1/models and responses (default: the model path).",
}
_ALIASES = {"max_running_requests": ("--max-num-sequences", "--max-num-seqs")}
_CHOICES = {"load_format": LOAD_FORMATS, "dtype": DTYPES, "kv_cache_dtype": KV_CACHE_DTYPES,
            "attention_backend": ATTENTION_BACKENDS, "schedule_policy": SCHEDULE_POLICIES, "log_level": LOG_LEVELS}


def flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: give an integer in 1..65535") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port}: give an integer in 1..65535 (0: any free port)")
    return port


def _base_type(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


def build_parser(prog: str = "python -m sgl_jupyter.launch_server") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Serve a model over OpenAI-compatible (/v1/...) and SGLang-native (/generate) HTTP APIs.")
    srv = p.add_argument_group("server")
    srv.add_argument("--host", default=DEFAULT_HOST, help="Address to bind; 0.0.0.0 = every interface.")
    srv.add_argument("--port", type=port_number, default=DEFAULT_PORT, help="HTTP port.")
    srv.add_argument("--api-key", default=None, help="Require `Authorization: Bearer KEY` (all but /health).")
    srv.add_argument("--log-file", default=None, help="Also write the log to this file.")
    srv.add_argument("--max-body-bytes", type=int, default=32 * 2**20, help="Largest request body accepted.")
    dp = p.add_argument_group("data parallelism (engine replicas on Ray Serve; pip install sgl-jupyter[cluster])")
    dp.add_argument("--dp-size", "--replicas", dest="dp_size", type=int, default=1, metavar="N",
                    help="Engine replicas behind a router (one GPU each on GPU machines); 1 = the single server.")
    dp.add_argument("--router-policy", default="cache-aware", choices=ROUTER_POLICIES,
                    help="How the router picks a replica: longest cached prefix (falls back to least-loaded when "
                         "loads are uneven), round-robin, or least-load.")
    dp.add_argument("--ray-address", default=None,
                    help="Join this Ray cluster ('auto': the one `ray start --head` started) instead of starting "
                         "Ray locally.")
    eng = p.add_argument_group("engine (SGLang ServerArgs names)")
    hints = typing.get_type_hints(EngineArgs)
    for f in dataclasses.fields(EngineArgs):
        if f.name in _SKIPPED:
            continue
        names = (flag(f.name),) + _ALIASES.get(f.name, ())
        kind = _base_type(hints[f.name])
        kwargs: dict[str, Any] = {"dest": f.name, "help": _HELP.get(f.name, f.name.replace("_", " "))}
        if kind is bool:
            eng.add_argument(*names, action="store_true", **kwargs)
            continue
        kwargs["default"] = f.default
        if f.name in _CHOICES:
            kwargs["choices"] = _CHOICES[f.name]
        elif f.name == "quantization":
            from ..engine import quantization

            kwargs["choices"] = quantization.names()
        elif kind in (int, float):
            kwargs["type"] = kind
            kwargs["metavar"] = kind.__name__.upper()
        eng.add_argument(*names, **kwargs)
    return p


def split_args(ns: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(server options, EngineArgs kwargs) from parsed arguments."""
    values = vars(ns)
    server = {k: values[k] for k in SERVER_FIELDS}
    engine = {f.name: values[f.name] for f in dataclasses.fields(EngineArgs) if f.name not in _SKIPPED}
    return server, engine


def validate_engine_args(parser: argparse.ArgumentParser, engine_kwargs: dict[str, Any]) -> EngineArgs:
    """EngineArgs' own range checks, reported as argparse errors naming the flag (exit status 2)."""
    try:
        return EngineArgs.from_kwargs(**engine_kwargs)
    except InvalidRequestError as e:
        message = str(e)
        for name in sorted(engine_kwargs, key=len, reverse=True):
            message = re.sub(rf"\b{name}\b", flag(name), message)
        if message.startswith("--"):
            first, _, rest = message.partition(" ")
            first, _, value = first.partition("=")
            message = f"argument {first}: {value + ' ' if value else ''}{rest}"
        parser.error(message)
        raise  # unreachable: parser.error exits


def parse_args(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None):
    parser = build_parser(prog) if prog else build_parser()
    ns = parser.parse_args(argv)
    server, engine = split_args(ns)
    validate_engine_args(parser, engine)
    if server["max_body_bytes"] < 1024:
        parser.error("argument --max-body-bytes: must be at least 1024")
    if server["dp_size"] < 1:
        parser.error(f"argument --dp-size/--replicas: must be at least 1, got {server['dp_size']}")
    return parser, server, engine
