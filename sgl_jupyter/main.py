"""The main job (``bash scripts/start.sh``): JupyterLab, with the sgl_jupyter extension, on
``notebooks/quickstart.ipynb`` at 127.0.0.1; with ``--headless`` it executes every notebook instead, on a
real kernel of this Python, and writes HTML copies with their outputs, printing their paths.

    python -m sgl_jupyter.main                      # JupyterLab on http://127.0.0.1:8888
    python -m sgl_jupyter.main --headless --quick   # CI sizes; HTML under artifacts/notebooks/
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
# the order a reader follows (and the headless run executes)
ORDER = ("quickstart", "radix_multiturn", "structured_output", "throughput", "serving")
KERNEL_NAME = "python3"  # what the notebooks name: one Python kernel offered, not two
LEGACY_KERNELS = ("sgl-jupyter",)  # a second spec earlier versions installed ("Python 3.11 (sgl_jupyter)")
QUICK_ENV = "SGL_NOTEBOOK_QUICK"  # notebooks read it: "1" = the small CI sizes
# Kernels get CurveZMQ keys from their manager (ipykernel >= 7 declares support in its spec), so none warns
# "Kernel is running over TCP without encryption" and kernel traffic on localhost is not plain text.
ENCRYPTION = "auto"


def install_kernelspec() -> str:
    """Make ``python3`` (the kernel every notebook names) run this very Python (the project's virtualenv):
    ipykernel's own spec with this interpreter's path instead of a bare ``python``, in this prefix, so
    JupyterLab offers one Python kernel and neither it nor the headless run can start another interpreter's
    ipykernel. Removes the second spec earlier versions installed. Returns the kernel name."""
    import shutil

    from ipykernel.kernelspec import get_kernel_dict

    kernels = Path(sys.prefix) / "share" / "jupyter" / "kernels"
    spec = {**get_kernel_dict(), "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)", "language": "python"}
    path = kernels / KERNEL_NAME / "kernel.json"
    if not path.is_file() or json.loads(path.read_text()) != spec:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(spec, indent=1))
    for legacy in LEGACY_KERNELS:
        shutil.rmtree(kernels / legacy, ignore_errors=True)
    return KERNEL_NAME


def trust_notebooks(paths: Sequence[Path], data_dir: Optional[str] = None) -> None:
    """Sign the project's notebooks (Jupyter's notebook trust, kept in `data_dir`: default the user's Jupyter
    data dir), so opening one logs no "is not trusted"."""
    import nbformat
    from nbformat.sign import NotebookNotary

    notary = NotebookNotary(data_dir=data_dir) if data_dir else NotebookNotary()
    for path in paths:
        try:
            nb = nbformat.read(path, as_version=4)
            if not notary.check_signature(nb):
                notary.sign(nb)
        except Exception as e:  # noqa: BLE001 - trust is a courtesy; an unreadable notebook shows its own error
            print(f"[start] could not mark {path.name} trusted: {e}", file=sys.stderr)


def notebook_paths(directory: Path = NOTEBOOKS) -> list[Path]:
    """The notebooks of ``directory``: those of ``ORDER`` first, in that order, then any others."""
    found = {p.stem: p for p in sorted(directory.glob("*.ipynb"))}
    return [found.pop(name) for name in ORDER if name in found] + list(found.values())


def static_copy(nb):
    """``nb`` as a page without a live kernel shows it: no widget state, so every widget output falls back
    to its static rendering (our widgets have one: the radix tree, token streams, the throughput chart), and
    widgets without one (sliders, progress bars; their text form is a stale repr) left out."""
    import copy

    WIDGET = "application/vnd.jupyter.widget-view+json"
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs
                            if WIDGET not in o.get("data", {}) or set(o["data"]) - {WIDGET, "text/plain"}]
    return nb


def execute_notebook(path: Path, out_dir: Path, kernel_name: str, timeout: int = 900) -> dict:
    """Execute one notebook (working directory: its folder) and write ``NAME.ipynb`` and ``NAME.html`` with
    the outputs into ``out_dir``, also when a cell fails. Returns name, paths, seconds, error (or None)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    nb = nbformat.read(path, as_version=4)
    from traitlets.config import Config

    config = Config({"KernelManager": {"transport_encryption": ENCRYPTION}})
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, store_widget_state=True,
                            coalesce_streams=True, resources={"metadata": {"path": str(path.parent)}}, config=config)
    t0 = time.perf_counter()
    error: Optional[str] = None
    try:
        client.execute()
    except CellExecutionError as e:
        error = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # the traceback's terminal colours
    except Exception as e:  # noqa: BLE001 - a dead kernel or a timeout: report it with this notebook
        error = f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - t0
    from jupyter_client.kernelspec import KernelSpecManager

    nb.metadata["sgl_jupyter"] = {"seconds": round(seconds, 1), "error": error,
                                  "kernel_argv": KernelSpecManager().get_kernel_spec(kernel_name).argv}
    out_dir.mkdir(parents=True, exist_ok=True)
    ipynb, html = out_dir / f"{path.stem}.ipynb", out_dir / f"{path.stem}.html"
    nbformat.write(nb, ipynb)
    body, _ = HTMLExporter().from_notebook_node(static_copy(nb))
    html.write_text(body, encoding="utf-8")
    return {"name": path.stem, "html": html, "ipynb": ipynb, "seconds": seconds, "error": error}


def run_headless(paths: Sequence[Path], out_dir: Path, quick: bool = False, timeout: int = 900) -> list[dict]:
    """Execute ``paths`` one after another; print each HTML path (and the first error) as it is written."""
    if quick:
        os.environ[QUICK_ENV] = "1"  # the kernel inherits it
    kernel = install_kernelspec()
    results = []
    for path in paths:
        print(f"[headless] executing {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ...",
              flush=True)
        r = execute_notebook(path, out_dir, kernel, timeout)
        status = "ok" if r["error"] is None else "FAILED"
        print(f"[headless] {status} in {r['seconds']:.0f}s: {r['html']}", flush=True)
        if r["error"]:
            print(r["error"].strip()[-3000:], file=sys.stderr, flush=True)
        results.append(r)
    return results


def lab_flags() -> list[str]:
    """JupyterLab settings of the main job (the browser tests start their JupyterLab with them too): CurveZMQ
    kernel keys; and no websocket keep-alive pings: jupyter_server 2.x hands Tornado >= 6.5 its ping interval
    and timeout in milliseconds where Tornado expects seconds (jupyter_server issue 1612), which logs "The
    websocket_ping_timeout (90000) cannot be longer than the websocket_ping_interval (30000)" on every start.
    A server on 127.0.0.1 has no proxy to keep a connection alive through; a closed tab still closes its socket."""
    return [f"--MappingKernelManager.transport_encryption={ENCRYPTION}",
            '--ServerApp.tornado_settings={"ws_ping_interval": 0}']


def start_lab(port: int, open_browser: bool, notebook: Path) -> None:
    """Replace this process with JupyterLab serving the repository, opened on ``notebook``."""
    import secrets

    install_kernelspec()
    token = secrets.token_hex(24)
    rel = notebook.relative_to(ROOT)
    trust_notebooks(notebook_paths())
    argv = [sys.executable, "-m", "jupyterlab", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ROOT}",
            *lab_flags(), str(rel)]
    if not open_browser:
        argv.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI run as root; Jupyter refuses without it
        argv.append("--allow-root")
    print(f"[start] JupyterLab with {rel}: http://127.0.0.1:{port}/lab/tree/{rel.as_posix()}?token={token} "
          "(Ctrl-C stops it)", flush=True)
    os.chdir(ROOT)
    os.execv(sys.executable, argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sgl_jupyter.main", description=__doc__.split("\n\n")[0])
    p.add_argument("--headless", action="store_true",
                   help="execute the notebooks (no JupyterLab) and write HTML copies with their outputs")
    p.add_argument("--quick", action="store_true",
                   help=f"with --headless: the small CI sizes ({QUICK_ENV}=1; the default sizes take longer)")
    p.add_argument("--notebooks", nargs="*", default=None, metavar="NOTEBOOK",
                   help="with --headless: these notebooks (default: every one in notebooks/)")
    p.add_argument("--out", default=str(ROOT / "artifacts" / "notebooks"), help="with --headless: output folder")
    p.add_argument("--timeout", type=int, default=900, help="with --headless: seconds a cell may take")
    p.add_argument("--port", type=int, default=8888, help="JupyterLab's port on 127.0.0.1")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser (print the URL)")
    p.add_argument("--notebook", default=str(NOTEBOOKS / "quickstart.ipynb"), help="the notebook JupyterLab opens")
    args = p.parse_args(argv)
    if not args.headless:
        start_lab(args.port, not args.no_browser, Path(args.notebook).resolve())
        return 0  # not reached: execv
    paths = [Path(n).resolve() for n in args.notebooks] if args.notebooks else notebook_paths()
    if not paths:
        p.error("no notebooks found")
    results = run_headless(paths, Path(args.out).resolve(), quick=args.quick, timeout=args.timeout)
    failed = [r["name"] for r in results if r["error"]]
    total = sum(r["seconds"] for r in results)
    print(f"[headless] {len(results) - len(failed)}/{len(results)} notebooks ran in {total:.0f}s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
