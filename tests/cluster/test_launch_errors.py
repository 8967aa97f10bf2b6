"""`launch_server --dp-size N` start-up errors, each one clear and before anything slow starts (no Ray needed)."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.cluster


def _launch(*args: str, prelude: str = "", timeout: float = 120, cli: bool = False) -> subprocess.CompletedProcess:
    """``launch_server ARGS`` (or ``sgl-jupyter serve ARGS`` with ``cli``) in a fresh interpreter."""
    entry = ("from sgl_jupyter.cli import main\nargv = ['serve', *ARGS]" if cli else
             "from sgl_jupyter.server.launch import main\nargv = ARGS")
    code = f"{prelude}\nimport sys\nARGS = {list(args)!r}\n{entry}\nsys.exit(main(argv))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def test_without_ray_the_error_says_what_to_install():
    # sys.modules[name] = None makes `import ray` fail exactly as in an environment without it
    res = _launch("--dp-size", "2", "--port", "0", prelude="import sys; sys.modules['ray'] = None")
    assert res.returncode == 1, res.stderr
    assert "pip install 'sgl-jupyter[cluster]'" in res.stderr


def test_bad_cluster_flags_are_argparse_errors():
    res = _launch("--dp-size", "0")
    assert res.returncode == 2 and "--dp-size/--replicas: must be at least 1" in res.stderr
    res = _launch("--replicas", "2", "--router-policy", "random", cli=True)
    assert res.returncode == 2 and "sgl-jupyter serve" in res.stderr and "--router-policy" in res.stderr
    assert "cache-aware" in res.stderr


def test_a_taken_port_fails_before_ray_starts():
    pytest.importorskip("ray")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = _launch("--replicas", "2", "--port", str(port), timeout=60)
    assert res.returncode == 1
    assert f"port {port}" in res.stderr and "Address already in use" in res.stderr
    assert "Started a local Ray instance" not in res.stderr
