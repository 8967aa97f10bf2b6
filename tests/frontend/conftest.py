"""Fixtures for the front-end tests: the labextension build, Debian Chromium, and a real JupyterLab 4 server
on 127.0.0.1 (empty token, free port, temp root dir) that serves the freshly built extension."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sgl_jupyter.main import lab_flags

ROOT = Path(__file__).resolve().parents[2]
LAB_SRC = ROOT / "labextension"
ARTIFACTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_DEBS = ("chromium", "fonts-noto-cjk")  # the browser, and fonts so Chinese text is not drawn as boxes
DRIVER = Path(__file__).with_name("lab_driver.mjs")

# The build that setup.py runs during install (labextension/frontend_build.py).
_spec = importlib.util.spec_from_file_location("sgl_frontend_build", LAB_SRC / "frontend_build.py")
frontend = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(frontend)


def npm() -> str:
    try:
        return frontend.npm()
    except frontend.FrontendBuildError as e:
        pytest.fail(str(e))


def run(cmd: list[str], cwd: Path, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True)


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """labextension/node_modules (`npm ci` when missing: the install normally did it)."""
    try:
        frontend.install_node_modules()
    except frontend.FrontendBuildError as e:
        pytest.fail(str(e))
    return LAB_SRC / "node_modules"


@pytest.fixture(scope="session")
def built_frontend(node_modules) -> Path:
    """The prebuilt extension, rebuilt first when labextension/ sources are newer (as an install would)."""
    try:
        frontend.build(python=sys.executable)
    except frontend.FrontendBuildError as e:
        pytest.fail(str(e))
    return frontend.LAB_OUT


def _missing_debs() -> list[str]:
    if shutil.which("dpkg-query") is None:
        return [] if CHROMIUM.is_file() else list(BROWSER_DEBS)
    status = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status}\\n", *BROWSER_DEBS],
                            capture_output=True, text=True).stdout
    installed = {line.split()[0] for line in status.splitlines() if line.endswith("install ok installed")}
    return [deb for deb in BROWSER_DEBS if deb not in installed]


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium and CJK fonts, installed with apt-get when missing (once per machine; Playwright never
    downloads a browser)."""
    missing = _missing_debs()
    if missing:
        apt = shutil.which("apt-get")
        if apt is None or os.geteuid() != 0:
            pytest.fail(f"{' '.join(missing)} missing and not installable here (needs root and apt-get): run "
                        f"`apt-get update && apt-get install -y {' '.join(missing)}`")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        lock_wait = ["-o", "DPkg::Lock::Timeout=120"]
        for cmd in ([apt, *lock_wait, "update", "-q"], [apt, *lock_wait, "install", "-y", "-q", *missing]):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing although the chromium package is installed"
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """A JupyterLab process; `url` is its base URL, `root` the directory it serves."""

    def __init__(self, root: Path, home: Path, share: Path):
        self.root, self.home, self.port = root, home, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ,
               # our own config/data/runtime dirs: no user settings leak in; the extension comes from
               # `share` (a link to the fresh build) ahead of any installed copy
               "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
               "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_PATH": str(share),
               "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "ws"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "TOKENIZERS_PARALLELISM": "false", "SGL_NOTEBOOK_QUICK": "1"}  # notebooks run at CI sizes
        self.log_path = home / "lab.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
             "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
             f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             "--ServerApp.disable_check_xsrf=True", "--LabApp.extension_manager=readonly", *lab_flags()]
            + (["--allow-root"] if os.geteuid() == 0 else []),
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"JupyterLab did not answer within {timeout}s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def federated_extensions(self) -> list[str]:
        with urllib.request.urlopen(f"{self.url}/lab", timeout=10) as r:
            page = r.read().decode()
        start = page.index('id="jupyter-config-data"')
        body = page[page.index(">", start) + 1: page.index("</script>", start)]
        return [e["name"] for e in json.loads(body).get("federated_extensions", [])]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def lab(built_frontend, tmp_path_factory):
    root = tmp_path_factory.mktemp("lab_root")
    home = tmp_path_factory.mktemp("lab_home")
    share = home / "share"
    (share / "labextensions").mkdir(parents=True)
    (share / "labextensions" / "sgl-jupyter").symlink_to(built_frontend, target_is_directory=True)
    # no "official Jupyter news?" toast over the page
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    # every cell in the DOM (no windowing), so a Run All can be read cell by cell without scrolling
    tracker = home / "settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    server = LabServer(root, home, share)
    yield server
    server.stop()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(server.log_path, ARTIFACTS / "jupyterlab.log")


def write_notebook(path: Path, cells: list[str]) -> None:
    """A notebook of code cells (nbformat 4.5) with the python3 kernel."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nbformat.write(nb, str(path))


def drive(chromium: Path, lab: LabServer, scenario: str, notebook: str, timeout: float = 240) -> dict:
    """Run a scenario of lab_driver.mjs (Playwright) against `lab`; returns what it measured in the page."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CHROMIUM": str(chromium)}
    done = subprocess.run(["node", str(DRIVER), scenario, lab.url, notebook, str(ARTIFACTS)], cwd=LAB_SRC, env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"lab_driver {scenario} failed (rc={done.returncode}):\nstdout:\n{done.stdout[-4000:]}\n"
                             f"stderr:\n{done.stderr[-4000:]}\nJupyterLab log:\n{lab.log_text()[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])
