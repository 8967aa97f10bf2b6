"""Build this folder (the JupyterLab extension and the widget ES modules) from Python.

setup.py runs `build()` in every install (wheel, sdist -> wheel, editable); the front-end tests run it
before they serve the build. Needs Node.js >= 20 with npm on PATH; `npm ci` fetches the locked packages
once (labextension/node_modules). Outputs, all generated and git-ignored:
``sgl_jupyter/labextension/`` (the prebuilt extension; installed to share/jupyter/labextensions/sgl-jupyter)
and ``sgl_jupyter/jupyter/static/<widget>.js`` (package data the Python widgets load).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

LAB_SRC = Path(__file__).resolve().parent
ROOT = LAB_SRC.parent
LAB_OUT = ROOT / "sgl_jupyter" / "labextension"
WIDGET_OUT = ROOT / "sgl_jupyter" / "jupyter" / "static"
WIDGETS = ("token_stream", "radix_tree", "throughput")
LAB_NAME = "sgl-jupyter"  # package.json "name"
NODE_MAJOR = 20
_BUILD_INPUTS = ("package.json", "package-lock.json", "tsconfig.json", "build-widgets.mjs", "build-labextension.mjs")


class FrontendBuildError(RuntimeError):
    """The front end could not be built; the message says what to install or fix."""


def outputs() -> list[Path]:
    return [LAB_OUT / "package.json"] + [WIDGET_OUT / f"{name}.js" for name in WIDGETS]


def sources() -> list[Path]:
    files = [LAB_SRC / name for name in _BUILD_INPUTS]
    files += [p for sub in ("src", "style") for p in (LAB_SRC / sub).rglob("*")]
    return [p for p in files if p.is_file()]


def is_stale() -> bool:
    """Whether an output is missing or older than a source."""
    made = outputs()
    if not all(p.is_file() for p in made):
        return True
    return max(p.stat().st_mtime for p in sources()) > min(p.stat().st_mtime for p in made)


def npm() -> str:
    """npm's path, after checking that node is new enough."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        raise FrontendBuildError(
            "Node.js and npm are needed to build sgl_jupyter's JupyterLab extension and widget front ends "
            f"(labextension/). Install Node.js >= {NODE_MAJOR} with npm (Debian: apt-get install -y nodejs npm) "
            "and install sgl_jupyter again.")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    major = re.match(r"v(\d+)", version)
    if major is None or int(major.group(1)) < NODE_MAJOR:
        raise FrontendBuildError(f"Node.js {version or '(unknown version)'} is too old to build labextension/: "
                                 f"install Node.js >= {NODE_MAJOR} and install sgl_jupyter again.")
    return npm


def _run(cmd: list[str], env: dict, timeout: float) -> None:
    print(f"[sgl-jupyter frontend] {' '.join(cmd[1:])} in labextension/", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(cmd, cwd=LAB_SRC, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise FrontendBuildError(f"`{' '.join(cmd[1:])}` in labextension/ took over {timeout:.0f} s") from e
    if done.returncode != 0:
        raise FrontendBuildError(f"`{' '.join(cmd[1:])}` in labextension/ failed ({done.returncode}):\n"
                                 f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")


def install_node_modules() -> None:
    """`npm ci` when node_modules is missing or older than package-lock.json."""
    stamp, lock = LAB_SRC / "node_modules" / ".package-lock.json", LAB_SRC / "package-lock.json"
    if stamp.is_file() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return
    _run([npm(), "ci", "--no-audit", "--no-fund"], dict(os.environ), timeout=900)


def build(python: str = sys.executable) -> bool:
    """Build the outputs when they are stale; returns whether it built. `python` must import jupyterlab
    (build-labextension.mjs reads JupyterLab's core package metadata from it)."""
    if not is_stale():
        return False
    install_node_modules()
    _run([npm(), "run", "build"], {**os.environ, "PYTHON": python}, timeout=900)
    missing = [str(p) for p in outputs() if not p.is_file()]
    if missing:
        raise FrontendBuildError(f"npm run build finished but did not write {', '.join(missing)}")
    return True


def data_files() -> list[tuple[str, list[str]]]:
    """setuptools `data_files` (paths relative to the project root) that install the prebuilt extension where
    JupyterLab looks for it: share/jupyter/labextensions/sgl-jupyter/, with install.json beside it."""
    dest = f"share/jupyter/labextensions/{LAB_NAME}"
    if not (LAB_OUT / "package.json").is_file():
        return []
    out: dict[str, list[str]] = {dest: [(LAB_SRC / "install.json").relative_to(ROOT).as_posix()]}
    for path in sorted(p for p in LAB_OUT.rglob("*") if p.is_file()):
        rel = path.parent.relative_to(LAB_OUT).as_posix()
        out.setdefault(dest if rel == "." else f"{dest}/{rel}", []).append(path.relative_to(ROOT).as_posix())
    return list(out.items())
