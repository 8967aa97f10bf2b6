"""``python -m sgl_jupyter.launch_server --model-path DIR --host 0.0.0.0 --port 30000 --log-level warning``:
the same command line as ``python -m sglang.launch_server`` (see ``--help``)."""
from __future__ import annotations

import sys

from .server.launch import main

if __name__ == "__main__":
    sys.exit(main())
