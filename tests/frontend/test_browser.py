"""End to end in a real browser: JupyterLab 4 on 127.0.0.1, headless Debian Chromium driven by playwright-core.

`widgets`: the three widget front ends, fed from a kernel thread (no model), incl. the two-way logprob toggle.
`magics`: %load_ext sgl_jupyter, %sgl_load (embedded model), a %%sgl cell with a Chinese prompt, %sgl_cache,
and the engine panel (numbers, its radix view, flush). Screenshots go to artifacts/screenshots/.
"""
from __future__ import annotations

import json

import pytest

from tests.frontend.conftest import drive, write_notebook

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]  # the first run on a machine may apt-get chromium

FEEDER = '''\
import threading, time
from sgl_jupyter.jupyter.widgets import TokenStream, RadixTreeView, ThroughputChart
ts, rt, tc = TokenStream(), RadixTreeView(), ThroughputChart()
display(ts, rt, tc)
PIECES = ["北京", "是", "中国", "的", "首都", "。", " Hello", " world"]

def feed():
    toks, text, points = [], "", []
    for i, piece in enumerate(PIECES):
        toks.append({"t": piece, "lp": -0.5 * i})
        text += piece
        points.append({"t": float(i), "tokens_per_s": 10.0 + i, "running": 1, "queued": i % 2, "hit_rate": 0.1 * i})
        ts.push(order=["answer"], streams={"answer": {"text": text, "tokens": list(toks), "n_tokens": len(toks),
                "tokens_per_s": 10.0 + i, "finish_reason": None, "done": False}})
        tc.push(points=list(points))
        time.sleep(0.25)
    ts.push(status="done", streams={"answer": {"text": text, "tokens": list(toks), "n_tokens": len(toks),
            "tokens_per_s": 17.0, "finish_reason": "stop", "done": True}})
    rt.push(highlight=[2], tree={"nodes": [
        {"id": 0, "parent": -1, "tokens": 0, "text": "", "ref": 0, "last_access": 0.0, "hits": 0},
        {"id": 1, "parent": 0, "tokens": 12, "text": "<|im_start|>system\\n你是助手", "ref": 0, "last_access": 1.0, "hits": 3},
        {"id": 2, "parent": 1, "tokens": 5, "text": "北京是中国的首都", "ref": 1, "last_access": 2.0, "hits": 1},
        {"id": 3, "parent": 1, "tokens": 4, "text": " Hello world", "ref": 0, "last_access": 3.0, "hits": 0}],
        "total_tokens": 21, "evictable_tokens": 16, "hit_tokens": 12, "miss_tokens": 9, "hit_rate": 12 / 21,
        "version": 1})

threading.Thread(target=feed, daemon=True).start()
'''


def test_widget_front_ends_render_live_updates(lab, chromium):
    write_notebook(lab.root / "widgets.ipynb", [FEEDER, 'print("SHOW_LP", ts.show_logprobs)'])
    r = drive(chromium, lab, "widgets", "widgets.ipynb")
    assert "sgl-jupyter" in lab.federated_extensions()
    assert r["streamText"] == "北京是中国的首都。 Hello world"
    assert len(r["streamLengths"]) >= 3, f"text should arrive piece by piece, saw lengths {r['streamLengths']}"
    assert r["tokenSpans"] == 8
    assert r["finish"] == "finish: stop"
    assert r["cjkFontWidth"] > 10, "the CJK token has no width: Chinese is not rendering"
    assert r["treeNodes"] == 3 and r["hitNodes"] == 1
    assert "3 nodes" in r["treeHead"] and "57.1%" in r["treeHead"]
    assert r["tps"] == "17.0 tok/s" and r["polylines"] == 4
    assert "SHOW_LP True" in r["outputs"]["1"], "the logprob toggle did not reach the kernel"
    assert not r["pageErrors"], r["pageErrors"]


MAGIC_CELLS = [
    "%load_ext sgl_jupyter",
    "%sgl_load --max-total-tokens 4096 --device cpu",
    '%%sgl --temperature 0 --max-tokens 24\n'
    's += system("你是一个乐于助人的助手。")\n'
    's += user("用一句话介绍北京。")\n'
    's += assistant(gen("answer", max_tokens=24))\n'
    's += user("北京在中国的北方还是南方？")\n'
    's += assistant(select("side", choices=["北方", "南方"]))',  # scoring the choices reuses the cached prefix
    "%sgl_cache",
    'import json; print("ANSWER", json.dumps(_sgl["answer"], ensure_ascii=False))',
    '%%sgl\ns += sel',  # completion target, never run
]


def test_magics_stream_tree_and_engine_panel(lab, chromium):
    write_notebook(lab.root / "e2e.ipynb", MAGIC_CELLS)
    r = drive(chromium, lab, "magics", "e2e.ipynb", timeout=400)
    # %%sgl editing
    assert r["sglCells"] == 2  # the program cell and the completion cell; the others are plain Python
    assert r["dslWords"] == ["system", "user", "assistant", "gen", "user", "assistant", "select"]
    assert "max_tokens" in r["tooltip"], f"hovering gen should show its signature, got {r['tooltip']!r}"
    assert "select" in r["completions"], f"Tab after 'sel' in a %%sgl cell offered {r['completions']}"
    # the panel follows the kernel and fills in once the extension and a model are loaded
    assert r["statusBeforeLoad"] == "SGL: %load_ext sgl_jupyter"
    assert r["statusAfterLoadExt"] == "SGL: no model"
    assert r["panelAfterLoad"]["kv_total"] > 0 and r["panelAfterLoad"]["device"].startswith("cpu")
    # streamed text: it grew while the cell ran and equals the kernel's final value
    answer = json.loads(r["outputs"]["4"].split("ANSWER", 1)[1].strip())
    assert answer and r["streamText"] == answer
    assert len(r["streamLengths"]) >= 3, f"expected a live stream, saw lengths {r['streamLengths']}"
    assert r["streamFinish"] in ("finish: length", "finish: stop")
    # tree nodes drawn (the notebook widget and the panel's own view)
    assert r["treeNodes"] > 0 and r["panelTreeNodes"] > 0
    # panel numbers non-zero while the cell generated (kv_used counts KV held by running requests)
    assert r["maxPanelRunning"] >= 1 and r["maxPanelKvUsed"] > 0
    assert r["maxPanelTps"] > 0, "the panel never showed a non-zero tokens/s while the cell generated"
    assert r["panel"]["kv_total"] == r["panelAfterLoad"]["kv_total"] > 0
    assert r["panel"]["cache_hit_rate"] > 0, "select's choices share the prompt: the panel should show cache hits"
    assert r["status"].startswith("SGL ") and "tok/s" in r["status"]
    # flush from the panel empties the cache, and the live tree widget follows
    assert r["flushMessage"] == "cache flushed"
    assert r["treeNodesAfterFlush"] == 0 and r["panelTreeNodesAfterFlush"] == 0
    assert not r["pageErrors"], r["pageErrors"]
