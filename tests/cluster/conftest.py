"""One real 2-replica cluster (Ray Serve, the embedded model on CPU) for the whole test session, started
the way a user starts it: ``python -m sgl_jupyter.launch_server --dp-size 2``."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import pytest

STARTUP_TIMEOUT_S = 480.0


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Cluster:
    url: str
    port: int
    proc: Optional[subprocess.Popen]
    log: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "".join(self.log[-80:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def cluster(model_path) -> Cluster:
    if not ray_available():
        pytest.skip("Ray Serve is not installed (pip install sgl-jupyter[cluster])")
    if os.environ.get("SGL_TEST_CLUSTER_URL"):  # a cluster already running (started by hand, for iterating)
        url = os.environ["SGL_TEST_CLUSTER_URL"].rstrip("/")
        yield Cluster(url=url, port=int(url.rsplit(":", 1)[1]), proc=None)
        return
    port = _free_port()
    cmd = [sys.executable, "-m", "sgl_jupyter.launch_server", "--dp-size", "2", "--port", str(port),
           "--model-path", model_path, "--device", "cpu", "--max-total-tokens", "16384", "--log-level", "warning"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    c = Cluster(url=f"http://127.0.0.1:{port}", port=port, proc=proc)
    ready = threading.Event()

    def pump() -> None:
        for line in proc.stdout:
            c.log.append(line)
            if "fired up and ready" in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not ready.is_set():
        if proc.poll() is not None:
            pytest.fail(f"the cluster exited with {proc.returncode} before it was ready:\n{c.output()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the cluster was not ready within {STARTUP_TIMEOUT_S:.0f}s:\n{c.output()}")
        time.sleep(0.5)
    yield c
    proc.send_signal(signal.SIGTERM)  # the launcher stops Serve and the Ray it started
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
