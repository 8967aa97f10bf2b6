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


# the flags `%sgl_load --help` shows (`--help-all`: every one); their help text is the parser's own
SHORT_HELP_FLAGS = ("--device", "--dtype", "--max-total-tokens", "--mem-fraction-static", "--max-running-requests",
                    "--context-length", "--chunked-prefill-size", "--disable-radix-cache", "--attention-backend",
                    "--random-seed")


def _first_sentence(text: str) -> str:
    text = " ".join((text or "").replace("(default: %(default)s)", "").split())
    return text.split(". ")[0].rstrip(".")


def short_help(width: int = 100) -> str:
    """`%sgl_load --help`: what most loads need, on one screen."""
    import textwrap

    parser = engine_parser()
    by_flag = {opt: a for a in parser._actions for opt in a.option_strings}

    def row(name: str, text: str) -> list[str]:
        return textwrap.wrap(text, width, initial_indent=f"  {name:<28}", subsequent_indent=" " * 30)

    lines = ["usage: %sgl_load [MODEL_PATH] [--FLAG VALUE ...]",
             "Load a model into this kernel's engine (replacing the loaded one). Flags as for",
             "python -m sgl_jupyter.launch_server (SGLang's names).", ""]
    lines += row("MODEL_PATH", "HF model directory (config.json, *.safetensors, tokenizer); none: the embedded "
                               "SmolLM2-135M-Instruct")
    for flag in SHORT_HELP_FLAGS:
        action = by_flag.get(flag)
        if action is None:
            continue
        name = action.dest.split("_")[-1].upper() if action.choices else action.metavar or action.dest.upper()
        metavar = "" if action.nargs == 0 else f" {name}"
        choices = f" ({', '.join(map(str, action.choices))})" if action.choices else ""
        lines += row(flag + metavar, _first_sentence(action.help) + choices)
    lines += ["", "%sgl_load --help-all lists every flag."]
    return "\n".join(lines)


def parse_engine_flags(argv: list[str]) -> tuple[Any, dict[str, Any], bool]:
    """-> (model_path or None, EngineArgs keyword arguments, help requested)."""
    from sgl_jupyter.server.args import split_args, validate_engine_args

    parser = engine_parser()
    if "--help-all" in argv:
        parser.print_help()
        return None, {}, True
    if "-h" in argv or "--help" in argv:
        print(short_help())
        return None, {}, True
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
