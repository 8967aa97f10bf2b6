"""Started from the repository root, the engine and the server load the model, whether or not Hugging Face's
``kernels`` package is installed. The root is then on ``sys.path`` and the project's ``kernels/`` folder is
importable as top-level ``kernels``, the name transformers imports the kernel hub by (issue 20, point 0).

"Without" is real, not mocked: the child runs with ``python -S`` on a copy of this environment's site-packages
made of symbolic links that leaves out the ``kernels`` distribution (its package and its ``dist-info``)."""
from __future__ import annotations

import os
import site
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HF_KERNELS_NAMES = ("kernels",)


def _hf_kernels_installed() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.version("kernels")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _site_without_hf_kernels(tmp: Path) -> list[Path]:
    """Each site-packages directory of this interpreter as a folder of links, minus Hugging Face's kernels."""
    dirs = []
    for i, src in enumerate(p for p in site.getsitepackages() if Path(p).is_dir()):
        dst = tmp / f"site{i}"
        dst.mkdir()
        for entry in Path(src).iterdir():
            name = entry.name
            if name in HF_KERNELS_NAMES or (name.startswith("kernels-") and name.endswith(".dist-info")):
                continue
            (dst / name).symlink_to(entry)
        dirs.append(dst)
    return dirs


def _command(code: str, with_hf_kernels: bool, tmp: Path) -> list[str]:
    """``python -c code`` from the repository root; without HF kernels: no site, then the filtered copies."""
    if with_hf_kernels:
        return [sys.executable, "-c", code]
    dirs = _site_without_hf_kernels(tmp)
    prelude = "import site\n" + "".join(f"site.addsitedir({str(d)!r})\n" for d in dirs)
    return [sys.executable, "-S", "-c", prelude + code]


def _env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the root must come from the working directory, as for a user
    env["PYTHONUNBUFFERED"] = "1"
    return env


CASES = [pytest.param(True, id="with-hf-kernels"), pytest.param(False, id="without-hf-kernels")]


@pytest.fixture(params=CASES)
def with_hf_kernels(request) -> bool:
    if request.param and not _hf_kernels_installed():
        pytest.skip("Hugging Face's kernels package is not installed here (transformers < 5.25 does not need it)")
    return request.param


def test_engine_loads_from_repo_root(with_hf_kernels, model_path, tmp_path):
    code = textwrap.dedent("""
        import importlib.util, sys
        from sgl_jupyter import Engine
        e = Engine(device="cpu", max_total_tokens=2048)
        out = e.generate("The capital of France is", {"max_new_tokens": 4, "temperature": 0})
        print("TEXT", repr(out["text"]))
        hub = sys.modules.get("kernels")
        print("HUB", getattr(hub, "__file__", None))
        e.shutdown()
    """)
    res = subprocess.run(_command(code, with_hf_kernels, tmp_path), cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "TEXT ' Paris" in res.stdout, res.stdout
    hub = res.stdout.split("HUB ", 1)[1].strip()
    if with_hf_kernels and hub != "None":  # transformers imported the hub: it must be Hugging Face's, not ours
        assert not hub.startswith(str(ROOT / "kernels")), hub


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_launch_server_from_repo_root(with_hf_kernels, model_path, tmp_path):
    port = _free_port()
    code = ("import runpy, sys; sys.argv = ['sgl_jupyter.launch_server', '--port', %r, '--max-total-tokens', '2048'];"
            " runpy.run_module('sgl_jupyter.launch_server', run_name='__main__')" % str(port))
    proc = subprocess.Popen(_command(code, with_hf_kernels, tmp_path), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        body = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/completions", method="POST",
                    data=b'{"model": "default", "prompt": "The capital of France is", "max_tokens": 4, '
                         b'"temperature": 0}', headers={"Content-Type": "application/json"})
                body = urllib.request.urlopen(req, timeout=30).read().decode()
                break
            except OSError:
                time.sleep(1)
        if body is None:
            proc.kill()
            pytest.fail(f"the server did not answer from the repository root:\n{proc.communicate()[0][-3000:]}")
        assert "Paris" in body, body
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
