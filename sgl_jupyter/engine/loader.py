"""HF model directory (config.json + *.safetensors + tokenizer) or ``load_format="dummy"`` -> a
ready model on the device. Every failure names the missing piece and the fix."""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from .distributed.parallel_state import TPGroup, check_tp_size
from .errors import KVCacheOOMError, ModelLoadError
from .quantization import quantize_model
from .models.registry import MODEL_REGISTRY, resolve_model_class

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    hf_config: Any
    model_path: str
    dtype: torch.dtype
    device: torch.device

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


def check_model_dir(model_path: str, load_format: str = "auto") -> Path:
    """Validate the directory before spending time on it."""
    path = Path(model_path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model path {str(path)!r} does not exist; pass --model-path an HF model directory "
                             "(with config.json and *.safetensors)")
    if not path.is_dir():
        raise ModelLoadError(f"model path {str(path)!r} is a file, not a directory: --model-path must be an HF "
                             "model directory (config.json + *.safetensors + tokenizer files); GGUF or single "
                             "weight files are not accepted")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ModelLoadError(f"model directory {str(path)!r} is not readable: check its permissions (ls -l)")
    if not (path / "config.json").is_file():
        present = sorted(p.name for p in path.iterdir())[:10]
        raise ModelLoadError(f"OSError: Can't find config.json in {str(path)!r} (found: {present or 'nothing'}); "
                             "the path is wrong or the model download is incomplete")
    if load_format != "dummy":
        if not weight_files(path):
            bins = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")] + \
                   [p.name for p in path.glob("*.pth")]
            if bins:
                raise ModelLoadError(
                    f"{str(path)!r} has only pickled weights ({', '.join(bins[:3])}); they can run arbitrary code "
                    "when loaded, so they are refused: convert them to safetensors (e.g. load with transformers "
                    "and save_pretrained(..., safe_serialization=True))")
            raise ModelLoadError(f"no *.safetensors weights in {str(path)!r}; the download is incomplete, or use "
                                 "load_format='dummy' for random weights")
    return path


def weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise ModelLoadError(f"{str(path)!r}: shards listed in model.safetensors.index.json are missing: "
                                 f"{missing[:3]}; the download is incomplete")
        return [path / n for n in names]
    return sorted(path.glob("*.safetensors"))


def iter_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                yield key, st.get_tensor(key)


def iter_safetensors_slices(files: list[Path]) -> Iterator[tuple[str, Any]]:
    """Lazy tensors: a tensor-parallel rank reads only its shard of each (``slice[a:b]``)."""
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                yield key, st.get_slice(key)


def load_hf_config(path: Path, trust_remote_code: bool = False):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise ModelLoadError(f"cannot read {path / 'config.json'}: {e}") from e


def load_tokenizer(path: Path, tokenizer_path: Optional[str], load_format: str):
    from transformers import AutoTokenizer

    src = Path(tokenizer_path) if tokenizer_path else path
    has_files = any((src / n).exists() for n in ("tokenizer.json", "tokenizer.model", "vocab.json",
                                                  "tokenizer_config.json"))
    if not has_files:
        if load_format == "dummy":
            from .default_model import default_model_path

            logger.warning("no tokenizer in %s; using the embedded SmolLM2 tokenizer for text I/O", src)
            return AutoTokenizer.from_pretrained(default_model_path())
        raise ModelLoadError(f"no tokenizer files (tokenizer.json / tokenizer.model) in {str(src)!r}; copy them "
                             "from the original model or pass tokenizer_path=")
    try:
        return AutoTokenizer.from_pretrained(str(src))
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the tokenizer from {str(src)!r}: {e}") from e


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def load_model(model_path: str, *, load_format: str = "auto", dtype: str = "auto", device: str = "auto",
               tokenizer_path: Optional[str] = None, trust_remote_code: bool = False, seed: int = 0,
               tp: Optional[TPGroup] = None, with_tokenizer: bool = True,
               quantization: Optional[str] = None) -> LoadedModel:
    """``quantization``: a name from ``engine.quantization`` applied to every linear layer after loading;
    ``tp``: this rank's place in a tensor-parallel group (the model holds and reads only its shard);
    ``with_tokenizer=False``: tensor-parallel workers need no tokenizer (``LoadedModel.tokenizer`` is None)."""
    tp = tp or TPGroup()
    path = check_model_dir(model_path, load_format)
    cfg = load_hf_config(path, trust_remote_code)
    cls = resolve_model_class(getattr(cfg, "architectures", None))
    if cls is None:
        raise ModelLoadError(f"unsupported architecture {getattr(cfg, 'architectures', None)} in "
                             f"{path / 'config.json'}; supported: {', '.join(sorted(MODEL_REGISTRY))}")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    check_tp_size(cfg, tp.size)
    tokenizer = load_tokenizer(path, tokenizer_path, load_format) if with_tokenizer else None
    try:
        with torch.device(dev), _default_dtype(dt):
            model = cls(cfg, tp=tp)
        if load_format == "dummy" and tp.size > 1:
            _dummy_shards(model, cls, cfg, dev, dt, seed)
        elif load_format == "dummy":
            gen = torch.Generator(device=dev).manual_seed(seed)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "norm" in name:
                        p.fill_(1.0)
                    else:
                        p.normal_(0.0, 0.02, generator=gen)
        else:
            quantization = _fp8_checkpoint(model, cfg, quantization, path)
            expected = {n for n, _ in model.named_parameters()}
            files = weight_files(path)
            with torch.no_grad():
                loaded = model.load_weights(iter_safetensors_slices(files) if tp.size > 1 else iter_safetensors(files))
            missing = expected - loaded
            if missing:
                raise ModelLoadError(f"weights missing from the checkpoint in {str(path)!r}: {sorted(missing)[:5]}"
                                     f"{' ...' if len(missing) > 5 else ''}")
        with torch.no_grad():
            try:
                quantize_model(model, quantization, model_path=path, device=dev)
            except ValueError as e:
                raise ModelLoadError(f"quantization={quantization!r}: {e}") from e
    except torch.OutOfMemoryError as e:
        raise KVCacheOOMError(f"out of memory loading the weights of {str(path)!r} on {dev}: use a smaller model, "
                              "a smaller --dtype (bfloat16), or --tp-size > 1") from e
    model.eval().requires_grad_(False)
    return LoadedModel(model, tokenizer, cfg, str(path), dt, dev)


def _fp8_checkpoint(model: torch.nn.Module, cfg, quantization: Optional[str], path: Path) -> Optional[str]:
    """An FP8 checkpoint (``quantization_config.quant_method == "fp8"``) loads its e4m3 weights as they are and
    runs with ``quantization="fp8"`` whether asked or not (as in SGLang)."""
    from .quantization.fp8 import prepare_checkpoint

    try:
        if not prepare_checkpoint(model, cfg):
            return quantization
    except ValueError as e:
        raise ModelLoadError(f"{str(path)!r}: {e}") from e
    if quantization not in (None, "fp8"):
        raise ModelLoadError(f"{str(path)!r} holds FP8 weights: quantization={quantization!r} cannot apply to them "
                             "(leave it unset, or use 'fp8')")
    return "fp8"


def _dummy_shards(model: torch.nn.Module, cls, cfg, dev: torch.device, dt: torch.dtype, seed: int) -> None:
    """Random weights equal to the single-GPU dummy model's, sharded: draw each full tensor in the same
    order from the same generator (shapes from a weightless single-rank twin), keep this rank's shard."""
    with torch.device("meta"), _default_dtype(dt):
        twin = cls(cfg)
    gen = torch.Generator(device=dev).manual_seed(seed)
    with torch.no_grad():
        for name, p in twin.named_parameters():
            if "norm" in name:
                full = torch.ones(p.shape, dtype=dt, device=dev)
            else:
                full = torch.empty(p.shape, dtype=dt, device=dev).normal_(0.0, 0.02, generator=gen)
            model.load_parameter(name, full)
            del full
