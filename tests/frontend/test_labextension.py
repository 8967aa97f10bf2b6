"""The TypeScript unit tests (vitest) and typecheck, the build, and the install of the prebuilt extension."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.frontend.conftest import LAB_SRC, ROOT, frontend, npm, run

WIDGETS = frontend.WIDGETS


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _labextension_list(env: dict | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "jupyterlab.labextensions", "list"], capture_output=True,
                          text=True, timeout=120, env=env)
    return _plain(done.stdout + done.stderr)


def _listed_enabled(listing: str, under: Path | None = None) -> bool:
    """Whether `jupyter labextension list` shows sgl-jupyter enabled and OK (in the section of `under`)."""
    section = None
    for line in listing.splitlines():
        if not line.startswith((" ", "\t")):
            section = line.strip()
        elif "sgl-jupyter" in line and (under is None or section == str(under)):
            return "enabled" in line and "OK" in line
    return False


def test_typescript_unit_tests_pass(node_modules):
    done = run([npm(), "test", "--", "--reporter=verbose"], LAB_SRC, timeout=300)
    out = _plain(done.stdout + done.stderr)
    assert done.returncode == 0, f"vitest failed:\n{out[-6000:]}"
    passed = re.search(r"Tests\s+(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 30, f"expected the full vitest suite to run:\n{out[-3000:]}"


def test_typescript_compiles_without_errors(node_modules):
    done = run([npm(), "run", "typecheck"], LAB_SRC, timeout=300)
    assert done.returncode == 0, f"tsc found errors:\n{done.stdout[-4000:]}{done.stderr[-2000:]}"


def test_build_writes_the_lab_extension_and_one_standalone_module_a_widget(built_frontend):
    meta = json.loads((built_frontend / "package.json").read_text())
    assert meta["name"] == "sgl-jupyter"
    assert (built_frontend / meta["jupyterlab"]["_build"]["load"]).is_file()
    for name in WIDGETS:
        js = (frontend.WIDGET_OUT / f"{name}.js").read_text(encoding="utf-8")
        assert re.search(r"export default [\w$]+;\s*$", js), f"{name}.js must end in anywidget's default export"
        assert not re.search(r"(?:^|[;}\n])\s*import[\s{*\"']|[^\w.]import\(", js), f"{name}.js must be standalone"


def test_widgets_load_the_built_modules(built_frontend):
    from sgl_jupyter.jupyter import widgets

    for name in WIDGETS:
        assert widgets.esm_path(name) == frontend.WIDGET_OUT / f"{name}.js"


def test_a_missing_widget_build_is_an_error_that_says_how_to_build(monkeypatch, tmp_path):
    from sgl_jupyter.jupyter import widgets

    monkeypatch.setattr(widgets, "STATIC_DIR", tmp_path)
    with pytest.raises(widgets.FrontendNotBuiltError, match=r"Node\.js >= 20.*pip install -e \."):
        widgets.esm_path("token_stream")


def test_jupyter_labextension_list_shows_it_enabled():
    """What the install of this environment (scripts/setup.sh: pip install -e .) must leave behind."""
    listing = _labextension_list()
    assert _listed_enabled(listing), f"sgl-jupyter is not an enabled lab extension here (pip install -e .):\n{listing}"


def _source_tree(dest: Path) -> Path:
    """What an sdist of the working tree holds, plus the front end already built (mtimes kept: not stale)."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--", "setup.py", "pyproject.toml",
                            "MANIFEST.in", "README.md", "sgl_jupyter", "kernels", "labextension"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
    built = [p.relative_to(ROOT).as_posix() for p in frontend.LAB_OUT.rglob("*") if p.is_file()]
    built += [p.relative_to(ROOT).as_posix() for p in frontend.WIDGET_OUT.glob("*.js")]
    for name in filter(None, names + built):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def test_a_plain_wheel_install_has_the_extension_enabled(built_frontend, tmp_path):
    """`pip install` of the wheel (not editable) puts the extension where JupyterLab finds it, enabled, and ships
    the widget modules. The wheel is built from a copy of the tree whose front end is built already, so this
    checks the packaging without a second npm build (the build itself: the fixtures above, setup.py)."""
    src = _source_tree(tmp_path / "src")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "npm run build" not in done.stderr, "the copied front end should not have been rebuilt"
    (wheel,) = (tmp_path / "dist").glob("sgl_jupyter-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    share = "sgl_jupyter-0.1.0.data/data/share/jupyter/labextensions/sgl-jupyter/"
    assert {share + "package.json", share + "install.json"} <= set(names)
    assert any(n.startswith(share + "static/remoteEntry.") for n in names)
    assert {f"sgl_jupyter/jupyter/static/{w}.js" for w in WIDGETS} <= set(names)
    assert not [n for n in names if n.startswith("sgl_jupyter/labextension/")], "the extension ships once"

    # A throwaway venv of its own: `pip install --prefix` would uninstall this environment's sgl-jupyter first.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                           "--no-deps", "--no-compile", str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip install failed:\n{done.stderr[-3000:]}"
    share = venv / "share" / "jupyter"
    listing = _labextension_list({**os.environ, "JUPYTER_PATH": str(share)})  # this env's jupyterlab lists it
    assert _listed_enabled(listing, under=share / "labextensions"), listing
