"""A real notebook kernel started at the repository root (as JupyterLab starts one for a notebook created at
the root of its file browser): ``%load_ext sgl_jupyter`` + ``%sgl_load`` load the embedded model there (the
repository's ``kernels/`` folder must not shadow Hugging Face's ``kernels`` package), and the engine panel comm
the kernel opens at ``%load_ext`` reports the loaded model and live tokens/s while cells queued behind each
other (Run All) are still running."""
from __future__ import annotations

import contextlib
import json
import queue
import sys
import time
from pathlib import Path

import pytest
from jupyter_client import KernelManager

from tests.jupyter.conftest import ext_name

ROOT = Path(__file__).resolve().parents[2]
TARGET = "sgl_jupyter.panel"
GEN_CELL = '%%sgl --temperature 0 --max-tokens 48\ns += "Count to twenty: 1, 2," + gen("n", ignore_eos=True)'


@contextlib.contextmanager
def _kernel_at_root(km: KernelManager):
    km.start_kernel(cwd=str(ROOT))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=180)  # a busy 2-core CI box starts a kernel slowly
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def root_kernel():
    with _kernel_at_root(KernelManager(kernel_name="python3")) as kc:
        yield kc


def _run_all(kc, cells: list[str], timeout: float = 600.0) -> tuple[list[dict], dict[str, str]]:
    """Send every cell at once (JupyterLab's Run All), then collect iopub until the last one is idle.
    Returns the messages, each with `_t` (arrival) and `_cell` (index of the cell that was running),
    and the ids of the execute requests."""
    ids = {kc.execute(src, store_history=False): str(i) for i, src in enumerate(cells)}
    last_id = list(ids)[-1]
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    running = None
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        parent = msg["parent_header"].get("msg_id")
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "busy" and parent in ids:
            running = int(ids[parent])
        msg["_t"], msg["_cell"] = time.monotonic(), running
        got.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle" and parent == last_id:
            return got, ids
    raise AssertionError(f"Run All did not finish in {timeout} s; last messages: {got[-5:]}")


def _errors(msgs: list[dict]) -> list[str]:
    return [f'{m["content"]["ename"]}: {m["content"]["evalue"]}' for m in msgs if m["msg_type"] == "error"]


def test_kernel_at_the_repo_root_loads_the_model_and_the_panel_is_live_during_run_all(root_kernel):
    kc = root_kernel
    cells = ["import os; print('cwd', os.getcwd())", f"%load_ext {ext_name()}", "%sgl_load --max-total-tokens 4096",
             GEN_CELL, "print(len(_sgl['n']) > 0)"]
    msgs, _ = _run_all(kc, cells)
    assert not _errors(msgs), _errors(msgs)
    printed = "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream")
    assert f"cwd {ROOT}" in printed and "True" in printed
    cards = [m for m in msgs if m["msg_type"] in ("display_data", "execute_result")
             and "sgl_jupyter engine loaded" in m["content"]["data"].get("text/plain", "")]
    assert cards and "SmolLM2" in cards[0]["content"]["data"]["text/plain"]

    # the kernel opened the panel comm during %load_ext's cell, not after the last queued cell
    opens = [m for m in msgs if m["msg_type"] == "comm_open" and m["content"]["target_name"] == TARGET]
    assert len(opens) == 1 and opens[0]["_cell"] == 1, [(m["_cell"], m["content"]) for m in opens]
    assert opens[0]["content"]["data"]["type"] == "stats" and opens[0]["content"]["data"]["data"]["loaded"] is False
    comm_id = opens[0]["content"]["comm_id"]
    pushed = [m for m in msgs if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm_id]
    loaded = [m for m in pushed if m["content"]["data"]["data"]["loaded"]]
    assert loaded and loaded[0]["_cell"] in (2, 3), [m["_cell"] for m in pushed]  # during %sgl_load or just after
    assert "SmolLM2" in loaded[0]["content"]["data"]["data"]["model"]
    live = [m for m in pushed if m["_cell"] == 3 and m["content"]["data"]["data"]["tokens_per_s"] > 0]
    assert live, [(m["_cell"], m["content"]["data"]["data"]) for m in pushed]  # while the %%sgl cell ran
    times = [m["header"]["date"].timestamp() for m in pushed]  # when the kernel sent them
    assert all(b - a >= 0.45 for a, b in zip(times, times[1:])), times  # at most ~2 pushes a second


def test_kernel_at_the_repo_root_without_hf_kernels_loads_the_model(tmp_path):
    """The same kernel on an environment without Hugging Face's `kernels` package (tests/test_repo_root.py's
    filtered site-packages: `python -S` and links to everything else), so the repository's `kernels/` folder is
    the only top-level `kernels` there is."""
    from jupyter_client.kernelspec import KernelSpecManager

    from tests.test_repo_root import _site_without_hf_kernels

    dirs = _site_without_hf_kernels(tmp_path)
    prelude = "import site, sys\n" + "".join(f"site.addsitedir({str(d)!r})\n" for d in dirs)
    code = prelude + "from ipykernel import kernelapp\nkernelapp.launch_new_instance()"
    spec_dir = tmp_path / "kernels" / "no-hf-kernels"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-S", "-c", code, "-f", "{connection_file}"],
        "display_name": "no HF kernels", "language": "python"}))
    km = KernelManager(kernel_name="no-hf-kernels",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]))
    with _kernel_at_root(km) as kc:
        cells = ["import importlib.metadata as md\ntry:\n    print('hf-kernels', md.version('kernels'))\n"
                 "except md.PackageNotFoundError:\n    print('hf-kernels none')",
                 f"%load_ext {ext_name()}", "%sgl_load --max-total-tokens 2048",
                 '%%sgl --temperature 0\ns += "The capital of France is" + gen("city", max_tokens=4)',
                 "print('city', repr(_sgl['city']))"]
        msgs, _ = _run_all(kc, cells)
    assert not _errors(msgs), _errors(msgs)
    printed = "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream")
    assert "hf-kernels none" in printed  # really without Hugging Face's package
    assert "city ' Paris" in printed, printed
