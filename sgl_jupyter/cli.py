"""The ``sgl-jupyter`` command: ``sgl-jupyter serve ...`` is ``python -m sgl_jupyter.launch_server ...``."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

USAGE = """usage: sgl-jupyter <command> [options]

commands:
  serve      serve a model over OpenAI-compatible and SGLang-native HTTP APIs
             (the same flags as python -m sgl_jupyter.launch_server; see `sgl-jupyter serve --help`)
  version    print the version
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "serve":
        from .server.launch import main as serve_main

        return serve_main(rest, prog="sgl-jupyter serve")
    if command in ("version", "--version"):
        from . import __version__

        print(f"sgl-jupyter {__version__}")
        return 0
    parser = argparse.ArgumentParser(prog="sgl-jupyter", usage=USAGE)
    parser.error(f"unknown command {command!r}; choose from: serve, version")
    return 2


if __name__ == "__main__":
    sys.exit(main())
