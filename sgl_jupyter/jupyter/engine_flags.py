"""`%sgl_load` flags: the launch_server command line's engine flags (``sgl_jupyter.server.args``, built
from `EngineArgs`), so the two spell and check every knob the same way.

Built on first use: the engine's config pulls in torch, which ``%load_ext`` must not wait for.
"""
from __future__ import annotations

import argparse
import functools
from typing import Any, NoReturn

from IPython.core.error import UsageError

# launch_server flags that are not engine flags: the kernel's server has its own magic
_SERVER_ONLY = {"host": "%sgl_serve --host", "port": "%sgl_serve --port", "api_key": "%sgl_serve --api-key",
                "log_file": None, "max_body_bytes": None}


class _HelpShown(Exception):
    pass


def _error(message: str) -> NoReturn:
    raise UsageError(f"%sgl_load: {message}")


def _exit(status: int = 0, message: Any = None) -> NoReturn:
    if status:
        _error(message or f"exit status {status}")
    raise _HelpShown()


@functools.lru_cache(maxsize=1)
def engine_parser() -> argparse.ArgumentParser:
    """launch_server's parser, with MODEL_PATH positional, raising UsageError instead of exiting."""
    from sgl_jupyter.server.args import build_parser

    parser = build_parser(prog="%sgl_load")
    parser.description = "Load a model into this kernel's engine. Flags as for python -m sgl_jupyter.launch_server."
    parser.add_argument("model_path_positional", nargs="?", default=None, metavar="MODEL_PATH",
                        help="HF model directory (same as --model-path); none: the embedded model")
    parser.error = _error  # type: ignore[method-assign]
    parser.exit = _exit  # type: ignore[method-assign]
    return parser


def parse_engine_flags(argv: list[str]) -> tuple[Any, dict[str, Any], bool]:
    """-> (model_path or None, EngineArgs keyword arguments, help requested)."""
    from sgl_jupyter.server.args import split_args, validate_engine_args

    parser = engine_parser()
    try:
        ns = parser.parse_args(argv)
    except _HelpShown:
        return None, {}, True
    positional = ns.model_path_positional
    server, engine = split_args(ns)
    for name, value in server.items():
        if value != parser.get_default(name):
            instead = _SERVER_ONLY.get(name)
            _error(f"--{name.replace('_', '-')} is a server flag" + (f": use {instead}" if instead else
                                                                     " and means nothing in a notebook"))
    if positional and engine.get("model_path") and positional != engine["model_path"]:
        _error(f"two model paths given: {positional!r} and --model-path {engine['model_path']!r}")
    model_path = positional or engine.pop("model_path", None)
    engine.pop("model_path", None)
    validate_engine_args(parser, {**engine, "model_path": model_path})
    return model_path, engine, False


def engine_help() -> str:
    return engine_parser().format_help()
