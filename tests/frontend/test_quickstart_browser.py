"""The quickstart as a newcomer meets it (issue 20), in a real browser: JupyterLab 4 on 127.0.0.1, headless
Debian Chromium, Run All on notebooks/quickstart.ipynb (CI sizes). Asserted: the notebook opens unmodified on
the one Python kernel; the engine panel shows the loaded model and a non-zero tokens/s while later cells are
still running (pushed by the kernel, not polled when idle); no output holds a warning or a traceback; the
answers are the ones the notebook's text promises; the last chart has points and agrees with the table
beside it; JupyterLab's log has no encryption, ping-timeout or trust warning. Screenshots: artifacts/screenshots/.
"""
from __future__ import annotations

import json
import re
import shutil
import urllib.request

import pytest

from sgl_jupyter.main import NOTEBOOKS, trust_notebooks
from tests.frontend.conftest import drive

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

PROMISED = {  # what the quickstart's text says the embedded model answers (greedy), and where it shows
    'print(_sgl["answer"])': ["The capital of France is Paris."],
    "three primary colors": ["Red", "Blue", "Yellow"],
    "info = json.loads": ["{'name': 'Alice', 'age': 28}"],
    'select("sentiment"': ["positive"],
    "geography teacher": ["The capital of Japan is Tokyo.", "Berlin is the capital city of Germany."],
}


def test_quickstart_run_all_in_jupyterlab(lab, chromium):
    log_start = len(lab.log_text())  # the lab is shared: other tests' untrusted notebooks logged before us
    path = lab.root / "quickstart.ipynb"
    shutil.copy(NOTEBOOKS / "quickstart.ipynb", path)
    trust_notebooks([path], data_dir=str(lab.home / "data"))  # as start.sh does for the user's data dir
    with urllib.request.urlopen(f"{lab.url}/api/kernelspecs", timeout=10) as r:
        specs = json.load(r)["kernelspecs"]
    assert [s["spec"]["display_name"] for s in specs.values()] == ["Python 3 (ipykernel)"]  # one Python kernel

    r = drive(chromium, lab, "quickstart", "quickstart.ipynb", timeout=600)
    nb = json.loads(path.read_text(encoding="utf-8"))
    sources = ["".join(c["source"]) for c in nb["cells"]]
    assert r["dirtyOnOpen"] == 0, "JupyterLab marked the notebook modified on open"
    assert r["dirtyAfterRun"] >= 1  # the same check sees a notebook whose outputs changed
    assert not r["pageErrors"], r["pageErrors"]

    # the panel was live during Run All: a loaded model and tokens/s > 0 while a cell was still running
    live = [s for s in r["samples"] if s["busy"] >= 0 and "SmolLM2" in s["model"] and s["tps"] > 0]
    assert live, r["samples"][-20:]
    stats_cell = next(i for i, src in enumerate(sources) if src.strip() == "%sgl_stats")
    assert any(s["busy"] < stats_cell for s in live), "the panel only filled in at the end of Run All"
    assert any(s["status"].startswith("SGL SmolLM2") for s in live)

    # no warning or traceback in any output; every code cell produced what it should
    outputs = {int(i): text for i, text in r["outputs"].items()}
    assert r["stderrOutputs"] == 0
    for style in r["wrapStyles"]:  # the %%sgl transcript and token stream wrap at spaces, never inside a word
        assert style["found"] and style["wordBreak"] == "normal" and style["overflowWrap"] == "break-word", style
        assert style["whiteSpace"] == "pre-wrap", style
    for i, text in outputs.items():
        assert not re.search(r"Warning|Traceback|Error", text), (sources[i], text)
    for snippet, answers in PROMISED.items():
        i = next(i for i, src in enumerate(sources) if snippet in src)
        for answer in answers:
            assert answer in outputs[i], (snippet, answer, outputs[i])
    text = "\n".join(src for src, c in zip(sources, nb["cells"]) if c["cell_type"] == "markdown")
    for promised in ("The capital of France is Paris.", '{"name": "Alice", "age": 28}', "*positive*",
                     "The capital of Japan is Tokyo.", "Berlin is the capital city of Germany."):
        assert promised in text, promised

    # the last chart shows the work since load, and its numbers are the table's
    chart, table = r["chart"], r["table"]
    assert chart["points"] >= 10, chart
    assert chart["tps"] == "0.0 tok/s" and float(table["tokens/s now"]) == 0.0
    generated = int(chart["generated"].split()[0].replace(",", ""))
    assert generated == int(table["generated tokens"]) > 0
    hit = float(chart["hitRate"].split()[-1].rstrip("%"))
    assert abs(hit - 100 * float(table["cache hit rate"])) < 0.06, (chart, table)

    log = lab.log_text()
    for warning in ("without encryption", "websocket_ping_timeout"):  # server-wide (and logged once): all of it
        assert warning not in log, (warning, log[-3000:])
    assert "is not trusted" not in log[log_start:], log[log_start:][-3000:]  # our notebook, signed as start.sh does
