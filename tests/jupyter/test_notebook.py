"""An executed notebook on a real ipykernel (nbclient): load the extension and the embedded model, run the
seed's programs in %%sgl cells, interrupt a long generation (the kernel gets SIGINT, as from Jupyter's stop
button), and check what the notebook saved (outputs, widget state, comm traffic) against the engine's own
numbers; then the engine panel comm as a front end speaks it, %sgl_serve + %sgl_connect from another
shell, and the nbconvert export of the static fallbacks."""
from __future__ import annotations

import json
import socket
import time
import uuid
from collections import defaultdict
from datetime import datetime

import nbformat
import pytest
from nbclient import NotebookClient

from tests.jupyter.conftest import ensure_loaded, ext_name, run_ok

INTERRUPT_AFTER_S = 25  # the long cell's timeout: nbclient then interrupts the kernel (SIGINT)
MARK = "@@json@@"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _json_cell(expr: str) -> str:
    return f"import json\nprint({MARK!r} + json.dumps({expr}, ensure_ascii=False))"


# The seed article's section 4.1, pasted as is into a %%sgl cell (only the port differs at run time).
SEED_41_VERBATIM = r'''%%sgl
from sglang import Runtime, assistant, user, gen, set_default_backend

# 启动运行时(连接本地服务)
rt = Runtime(endpoint="http://localhost:30000")

# 定义结构化输出规则:只允许输出 { "name": "...", "age": 数字 }
json_schema = r'{"name": "[^"]+", "age": \d+}'

# 构建程序
def get_user_info():
    return (
        user("请根据以下信息生成用户资料:张三,28岁")
        + assistant(gen(regex=json_schema))
    )

# 执行
state = rt.run(get_user_info)
print(state.text)
'''


def _cells(port: int) -> list[str]:
    return [
        f"%load_ext {ext_name()}",
        "%sgl_load --max-total-tokens 4096 --device cpu",
        # seed 4.1
        r'''%%sgl --temperature 0 --out info_state
json_schema = r'{"name": "[^"]+", "age": \d+}'
s += user("请根据以下信息生成用户资料:张三,28岁") + assistant(gen("info", regex=json_schema))''',
        "from sgl_jupyter.jupyter import get_session\nengine = get_session().engine\nfinished = []\n"
        "unsubscribe = engine.subscribe(lambda e: finished.append(e) if type(e).__name__ == 'FinishEvent' else None)",
        # seed 4.3
        '''%%sgl --seed 0 --out agent_state
s += "上海今天天气如何?"
intent = s + "请判断用户意图,只回答【查天气】或【其他】:" + gen(max_tokens=10)
if "查天气" in intent:
    weather_data = "晴,26°C,东南风3级"
    s += f"\\n天气API返回:{weather_data}"
s += "\\n请用自然语言总结以上信息:" + gen(max_tokens=48)
return s''',
        "unsubscribe()\n" + _json_cell(
            '{"info": info_state["info"], "info_meta": info_state.get_meta_info("info"), '
            '"agent_text": agent_state.text(), '
            '"agent_gens": [[e.text, e.meta_info["completion_tokens"]] for e in finished]}'),
        "%sgl_cache",
        "%sgl_stats",
        # the long generation nbclient interrupts
        '''%%sgl --temperature 0 --out long_state
s += "Write a very long story about a dragon:" + gen("story", max_tokens=3000, ignore_eos=True)''',
        _json_cell('{"running": engine.get_server_info()["num_running_reqs"], "kv": engine.get_server_info()["kv"], '
                   '"story_tokens": get_session().last_stream.streams["story"]["n_tokens"], '
                   '"status": get_session().last_stream.status}'),
        '''%%sgl --temperature 0 --out after_state
s += "The capital of France is" + gen("city", max_tokens=4)''',
        f"%sgl_serve --port {port}",
        SEED_41_VERBATIM.replace("30000", str(port)),
        "from sgl_jupyter.jupyter.feeds import readable_snapshot\n_sgl_cache.refresh()\n"
        + _json_cell('{"tree": _sgl_cache.tree, "snapshot": readable_snapshot(engine.cache_snapshot(201)), '
                     '"after": after_state.get_meta_info("city")}'),
    ]


class RecordingClient(NotebookClient):
    """Records every comm message the kernel sends (to measure widget message rates)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.comm_msgs: list[tuple[str, datetime]] = []

    def process_message(self, msg, cell, cell_index):
        if msg["msg_type"] == "comm_msg":
            self.comm_msgs.append((msg["content"]["comm_id"], msg["header"]["date"]))
        return super().process_message(msg, cell, cell_index)


def _printed(cell) -> dict:
    for out in cell.outputs:
        if out.get("name") == "stdout" and MARK in out.get("text", ""):
            return json.loads(out["text"].split(MARK, 1)[1])
    raise AssertionError(f"no JSON printed by {cell.source!r}: {cell.outputs}")


def _widget_states(nb, widget_class: str) -> list[dict]:
    states = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    return [m["state"] for m in states.values() if m["state"].get("_anywidget_id", "").endswith(widget_class)]


def _panel_messages(kc, comm_id: str, until, timeout: float = 60.0) -> list[dict]:
    got, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=0.5)
        except Exception:  # noqa: BLE001 - queue.Empty
            continue
        if msg["msg_type"] == "comm_msg" and msg["content"]["comm_id"] == comm_id:
            got.append({**msg["content"]["data"], "_date": msg["header"]["date"]})
            if until(got):
                return got
    raise AssertionError(f"panel messages so far: {got}")


@pytest.fixture(scope="module")
def executed():
    """The notebook executed on a real kernel, kept alive for the panel and connect tests."""
    port = _free_port()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in _cells(port)]
    client = RecordingClient(
        nb, timeout=600, kernel_name="python3", interrupt_on_timeout=True,
        timeout_func=lambda cell: INTERRUPT_AFTER_S if "very long story" in cell.source else 600,
        allow_error_names=["SglCellInterrupted"], store_widget_state=True,
        resources={"metadata": {"path": str(__import__("pathlib").Path(__file__).parents[2])}})
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        client.set_widgets_metadata()
        yield nb, client, port


def test_notebook_runs_the_seed_programs_and_widgets_match_the_engine(executed):
    nb, client, _ = executed
    cells = nb.cells
    assert any("sgl_jupyter engine loaded" in o.get("data", {}).get("text/plain", "") for o in cells[1].outputs)
    numbers = _printed(cells[5])
    assert json.loads(numbers["info"])["name"]
    streams = _widget_states(nb, "TokenStream")
    info_widget = next(s for s in streams if s["order"] == ["info"])
    assert info_widget["status"] == "done"
    info_stream = info_widget["streams"]["info"]
    assert info_stream["text"] == numbers["info"]
    assert info_stream["n_tokens"] == numbers["info_meta"]["completion_tokens"]
    assert "".join(t["t"] for t in info_stream["tokens"]) == numbers["info"]

    text = numbers["agent_text"]
    assert text.startswith("上海今天天气如何?请判断用户意图") and "天气API返回:晴,26°C,东南风3级" in text
    agent_widget = next(s for s in streams if s["order"] == ["gen", "gen#2"])
    engine_gens = {t: n for t, n in numbers["agent_gens"]}
    for name in agent_widget["order"]:
        stream = agent_widget["streams"][name]
        assert engine_gens[stream["text"]] == stream["n_tokens"]
        assert stream["text"] in text
    # the final text is shown below the widget, and the widget output carries the static fallback
    finals = [o for o in cells[4].outputs if "text/html" in o.get("data", {}) and "sgl-final-text" in o["data"]["text/html"]]
    assert finals and finals[0]["data"]["text/plain"] == text
    widget_out = [o for o in cells[4].outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widget_out and "sgl-static-token-stream" in widget_out[0]["data"]["text/html"]


def test_widget_messages_are_throttled_on_the_real_comm(executed):
    nb, client, _ = executed
    by_comm = defaultdict(list)
    for comm_id, date in client.comm_msgs:
        by_comm[comm_id].append(date.timestamp())
    assert by_comm
    worst = 0
    for times in by_comm.values():
        times.sort()
        lo = 0
        for hi, now in enumerate(times):
            while now - times[lo] > 1.0:
                lo += 1
            worst = max(worst, hi - lo + 1)
    assert worst <= 21, worst
    busiest = max(by_comm.values(), key=len)
    assert len(busiest) >= 10  # the long story streamed for many seconds: a live widget, updated


def test_interrupted_cell_aborted_its_request_and_the_next_cell_worked(executed):
    nb, _, _ = executed
    long_cell = next(c for c in nb.cells if "very long story" in c.source)
    errors = [o for o in long_cell.outputs if o.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "SglCellInterrupted", long_cell.outputs
    assert "aborted" in errors[0]["evalue"]
    assert not any("sgl_jupyter/engine" in line for line in errors[0]["traceback"])
    after = _printed(nb.cells[nb.cells.index(long_cell) + 1])
    assert after["running"] == 0 and after["status"] == "interrupted"
    kv = after["kv"]
    assert kv["used"] == 0 and kv["protected"] == 0 and kv["free"] + kv["evictable"] == kv["total"], kv
    assert 0 < after["story_tokens"] < 3000
    final = _printed(next(c for c in nb.cells if "_sgl_cache.refresh()" in c.source))
    assert final["after"]["finish_reason"]["type"] in ("length", "stop")


def test_saved_tree_and_chart_state_match_the_engine(executed):
    nb, _, _ = executed
    final = _printed(next(c for c in nb.cells if "_sgl_cache.refresh()" in c.source))
    keys = ("id", "parent", "tokens", "text", "ref", "hits")
    assert [[n[k] for k in keys] for n in final["tree"]["nodes"]] == \
           [[n[k] for k in keys] for n in final["snapshot"]["nodes"]]
    saved = _widget_states(nb, "RadixTreeView")
    assert saved and saved[0]["tree"]["version"] == final["snapshot"]["version"]
    charts = _widget_states(nb, "ThroughputChart")
    assert charts and len(charts[0]["points"]) >= 3
    assert any(p["tokens_per_s"] > 0 for p in charts[0]["points"])


def test_engine_panel_comm_speaks_the_contract(executed):
    nb, client, _ = executed
    kc = client.km.blocking_client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        comm_id = uuid.uuid4().hex
        kc.shell_channel.send(kc.session.msg("comm_open", {"comm_id": comm_id, "target_name": "sgl_jupyter.panel",
                                                           "data": {}}))
        first = _panel_messages(kc, comm_id, lambda got: any(m["type"] == "stats" for m in got))[-1]
        stats = first["data"]
        assert stats["loaded"] is True and stats["backend"] == "engine"
        assert stats["kv_total"] == 4096 and stats["device"] == "cpu" and "SmolLM2" in stats["model"]
        assert set(stats) == {"loaded", "model", "device", "dtype", "kv_used", "kv_total", "running", "queued",
                              "cache_hit_rate", "tokens_per_s", "backend"}
        # while a cell generates, the kernel pushes changing stats, at most every 0.5 s
        kc.execute('%%sgl --temperature 0\ns += "Panel test:" + gen("x", max_tokens=40, ignore_eos=True)')
        pushed = _panel_messages(kc, comm_id, lambda got: sum(m["type"] == "stats" and m["data"]["running"] == 0
                                                              and m["data"]["tokens_per_s"] == 0 for m in got) >= 1
                                 and any(m["type"] == "stats" and m["data"]["running"] > 0 for m in got))
        times = [m["_date"].timestamp() for m in pushed if m["type"] == "stats"]
        assert all(b - a >= 0.45 for a, b in zip(times, times[1:])), times
        busy = [m["data"] for m in pushed if m["type"] == "stats" and m["data"]["running"] > 0]
        assert busy and all(0 < m["kv_used"] <= 4096 for m in busy)
        # tree and flush requests
        kc.shell_channel.send(kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {"type": "tree"}}))
        tree = _panel_messages(kc, comm_id, lambda got: any(m["type"] == "tree" for m in got))[-1]
        assert tree["data"]["nodes"][0]["id"] == 0 and tree["data"]["total_tokens"] > 0
        kc.shell_channel.send(kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {"type": "flush"}}))
        flushed = _panel_messages(kc, comm_id, lambda got: any(m["type"] == "flushed" for m in got))
        assert [m for m in flushed if m["type"] == "flushed"][-1]["data"]["ok"] is True
        kc.shell_channel.send(kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {"type": "bogus"}}))
        bad = _panel_messages(kc, comm_id, lambda got: any(m["type"] == "error" for m in got))
        assert "unknown panel message type" in bad[-1]["data"]["message"]
    finally:
        kc.stop_channels()


def test_connect_streams_from_the_notebooks_server(executed, shell):
    _, _, port = executed
    from sgl_jupyter.jupyter import get_session

    ensure_loaded(shell)
    session = get_session(shell)
    try:
        shell.run_line_magic("sgl_connect", f"http://127.0.0.1:{port}")
        assert session.kind == "endpoint" and session.engine is None
        run_ok(shell, '%%sgl --temperature 0 --out remote\ns += "The capital of France is" + gen("city", max_tokens=6)')
        state = shell.user_ns["remote"]
        stream = session.last_stream.streams["city"]
        assert stream["text"] == state["city"] and stream["done"]
        assert stream["n_tokens"] == state.get_meta_info("city")["completion_tokens"]
        assert "".join(t["t"] for t in stream["tokens"]) == state["city"]
        frame = shell.run_line_magic("sgl_stats", "")
        session.charts[-1].close()
        assert frame.loc["KV capacity (tokens)", "value"] == 4096  # the notebook kernel's engine
    finally:
        session.unload()
        ensure_loaded(shell)


def test_nbconvert_html_shows_the_static_fallbacks(executed):
    from nbconvert import HTMLExporter

    nb, _, _ = executed
    stripped = nbformat.reads(nbformat.writes(nb), as_version=4)
    stripped.metadata.pop("widgets", None)  # a notebook saved without widget state
    body, _ = HTMLExporter().from_notebook_node(stripped)
    assert "sgl-static-token-stream" in body
    assert "sgl-static-radix-tree" in body and 'class="sgl-node"' in body
    assert "sgl-static-throughput" in body
    assert 'alt="throughput chart"' in body  # refreshed after the cells that moved it: a PNG, not "no steps yet"
    assert "天气API返回" in body


def test_seed_pasted_verbatim_runs_against_the_kernels_own_server(executed):
    nb, _, _ = executed
    cell = next(c for c in nb.cells if "from sglang import Runtime" in c.source)
    assert "json_schema = r'{\"name\": \"[^\"]+\", \"age\": \\d+}'" in cell.source  # as in the seed
    printed = "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")
    assert "<|im_start|>assistant\n{\"name\": \"" in printed, cell.outputs  # the regex constrained the answer
    assert not [o for o in cell.outputs if o.get("output_type") == "error"]


def test_unload_stops_the_server_and_the_engine(executed):
    import httpx

    _, client, port = executed
    kc = client.km.blocking_client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        reply = kc.execute_interactive("%sgl_unload", timeout=120, output_hook=lambda msg: None)
        assert reply["content"]["status"] == "ok"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/get_model_info", timeout=5)
        out = []
        kc.execute_interactive("from sgl_jupyter.jupyter import get_session; print(get_session().kind)", timeout=60,
                               output_hook=lambda msg: out.append(msg["content"].get("text", "")))
        assert "None" in "".join(out)
    finally:
        kc.stop_channels()
