"""The live widgets against the engine's own numbers: the radix tree view equals `cache_snapshot()`, chart
points are the engine's step numbers, token streams are throttled; and their static fallbacks."""
from __future__ import annotations

import base64
import threading
import time
import uuid

import pytest

from tests.jupyter.conftest import run_ok, wait_until

_NODE_KEYS = ("id", "parent", "tokens", "text", "ref", "hits")


def _nodes(tree: dict) -> list[tuple]:
    return [tuple(n[k] for k in _NODE_KEYS) for n in tree["nodes"] if n["id"] != -2]


def _snapshot(view, engine) -> dict:
    from sgl_jupyter.jupyter.feeds import readable_snapshot

    return readable_snapshot(engine.cache_snapshot(view.max_nodes + 1))


def test_tree_previews_drop_the_halves_of_cut_characters(ip, kernel_engine):
    from sgl_jupyter.jupyter.feeds import readable_snapshot

    snap = {"nodes": [{"id": 1, "text": "资料:Alice,28\ufffd\u2026"}, {"id": 2, "text": "\ufffd\ufffd{\"name\""},
                      {"id": 3, "text": "plain"}], "version": 7}
    assert [n["text"] for n in readable_snapshot(snap)["nodes"]] == ["资料:Alice,28\u2026", '{"name"', "plain"]
    assert readable_snapshot(snap)["version"] == 7
    # the quickstart's prompt: its node's preview cuts "岁" in two in the engine's own snapshot
    kernel_engine.generate("请根据以下信息生成用户资料:Alice,28岁。请根据以下信息生成用户资料:Bob,35岁。",
                           {"max_new_tokens": 1})
    ip.run_line_magic("sgl_cache", "")
    view = ip.user_ns["_sgl_cache"]
    try:
        assert not [n["text"] for n in view.tree["nodes"] if "\ufffd" in n["text"]]
        assert any("Alice,28" in n["text"] for n in view.tree["nodes"])
    finally:
        view.close()


def _in_sync(view, engine) -> bool:
    return view.tree.get("version") == _snapshot(view, engine)["version"]


def test_cache_view_follows_the_engine_tree(ip, session, kernel_engine):
    ip.run_line_magic("sgl_cache", "")
    view = ip.user_ns["_sgl_cache"]
    try:
        assert _nodes(view.tree) == _nodes(_snapshot(view, kernel_engine))
        pushes = len(view.push_times)
        prompt = f"Tree test {uuid.uuid4().hex[:8]}: the sky is"
        run_ok(ip, f'%%sgl --temperature 0\ns += "{prompt}" + gen("a", max_tokens=4)')
        assert wait_until(lambda: _in_sync(view, kernel_engine), 10), "the view did not refresh by itself"
        assert len(view.push_times) > pushes
        snap = _snapshot(view, kernel_engine)
        assert _nodes(view.tree) == _nodes(snap)
        for key in ("total_tokens", "evictable_tokens", "hit_tokens", "miss_tokens", "hit_rate"):
            assert view.tree[key] == snap[key], key
        assert any(prompt[:20] in n["text"] for n in view.tree["nodes"])

        # the same prompt again hits the cached prefix: those nodes are highlighted
        before = {n["id"]: n["hits"] for n in view.tree["nodes"]}
        run_ok(ip, f'%%sgl --temperature 0\ns += "{prompt}" + gen("b", max_tokens=4)')
        assert wait_until(lambda: _in_sync(view, kernel_engine) and view.highlight, 10)
        after = {n["id"]: n["hits"] for n in view.tree["nodes"]}
        assert view.highlight and all(after[i] > before.get(i, 0) for i in view.highlight)
        assert view.tree["hit_tokens"] > snap["hit_tokens"]
    finally:
        view.close()
    pushes = len(view.push_times)
    run_ok(ip, '%%sgl\ns += "closed view" + gen("c", max_tokens=2)')
    time.sleep(0.7)
    assert len(view.push_times) == pushes  # a closed view no longer listens


def test_cache_view_collapses_beyond_max_nodes(ip, kernel_engine):
    for i in range(4):
        kernel_engine.generate(f"Distinct prompt number {i} {uuid.uuid4().hex}", {"max_new_tokens": 1})
    ip.run_line_magic("sgl_cache", "--max-nodes 3")
    view = ip.user_ns["_sgl_cache"]
    try:
        real = [n for n in view.tree["nodes"] if n["id"] > 0]
        synthetic = [n for n in view.tree["nodes"] if n["id"] == -2]
        assert len(real) == 3  # the root is not counted
        assert len(synthetic) == 1 and "more nodes" in synthetic[0]["text"]
        html = view._repr_mimebundle_()[0]["text/html"]
        assert html.count('class="sgl-node"') == 4
    finally:
        view.close()


def _tokens_between_points_match(points: list[dict]) -> None:
    """Each point's tokens/s times the time since the previous point is the tokens generated in between."""
    for a, b in zip(points, points[1:]):
        if b["tokens_per_s"] > 0:
            assert abs(b["tokens_per_s"] * (b["t"] - a["t"]) - (b["generated"] - a["generated"])) < 0.5, (a, b)


def test_stats_after_the_work_shows_the_history_since_load(ip, session, kernel_engine):
    run_ok(ip, '%%sgl --temperature 0\ns += "Counting: 1, 2, 3," + gen("n", max_tokens=12, ignore_eos=True)')
    frame = ip.run_line_magic("sgl_stats", "")  # made after the work, as a notebook's last cell
    chart = session.charts[-1]
    try:
        points = list(chart.points)
        assert len(points) >= 3 and any(p["tokens_per_s"] > 0 for p in points), points
        assert [p["t"] for p in points] == sorted(p["t"] for p in points)
        _tokens_between_points_match(points)
        last, info = points[-1], kernel_engine.get_server_info()
        assert last["tokens_per_s"] == 0 and last["running"] == 0  # the engine is idle now
        assert last["generated"] == frame.loc["generated tokens", "value"] == info["generation_tokens_total"]
        assert last["hit_rate"] == frame.loc["cache hit rate", "value"] == round(info["cache_hit_rate"], 4)
        assert frame.loc["tokens/s now", "value"] == 0.0
        assert frame.loc["tokens/s, peak since load", "value"] == max(p["tokens_per_s"] for p in points) > 0
        assert isinstance(frame.loc["KV capacity (tokens)", "value"], int)  # a counter prints as 8192, not 8192.0
        text = chart._repr_mimebundle_()[0]["text/plain"]
        assert f"{last['generated']} tokens generated" in text and "no steps yet" not in text

        before = info["generation_tokens_total"]
        run_ok(ip, '%%sgl --temperature 0\ns += "Letters: a, b, c," + gen("n", max_tokens=12, ignore_eos=True)')
        assert wait_until(lambda: chart.points[-1]["generated"] == before + 12
                          and chart.points[-1]["tokens_per_s"] == 0.0, 10), chart.points[-3:]
        new = [p for p in chart.points if p["t"] > last["t"]]
        assert any(p["tokens_per_s"] > 0 for p in new), new  # the live chart followed the new cell
        _tokens_between_points_match(chart.points)
        assert chart.max_rate(1.0) <= 1 / session.config.chart_interval + 1
    finally:
        chart.close()
    assert frame.loc["KV capacity (tokens)", "value"] == info["max_total_num_tokens"]
    assert "requests observed by this kernel" in frame.index
    again = ip.run_line_magic("sgl_stats", "--window 30")
    session.charts[-1].close()
    assert session.charts[-1].window_s == 30
    assert again.loc["generated tokens", "value"] == kernel_engine.get_server_info()["generation_tokens_total"]
    assert again.loc["end-to-end latency (s) p50", "value"] > 0


def test_token_stream_is_throttled_in_a_real_cell(ip, session, event_log):
    run_ok(ip, '''%%sgl --temperature 0
s += "Name a fruit:"
forks = s.fork(6)
forks += gen("fruit", max_tokens=24, ignore_eos=True)
forks.join()
''')
    widget = session.last_stream
    assert [widget.streams[k]["n_tokens"] for k in widget.order] == [24] * 6
    tokens = [e for e in event_log.of("TokenEvent") if e.token_ids]
    assert len(tokens) >= 6 * 23
    assert widget.max_rate(1.0) <= session.config.widget_rate + 1
    assert len(widget.push_times) < len(tokens)  # many tokens per message


def test_token_stream_feed_caps_messages_under_a_flood(session):
    """Thousands of events a second from another thread: the widget still gets <= ~20 messages a second."""
    from sgl_jupyter.jupyter.feeds import TokenStreamFeed
    from sgl_jupyter.jupyter.widgets import TokenStream

    widget = TokenStream()
    feed = TokenStreamFeed(widget, session.pump, None, rate=20.0)
    feed.on_program_event({"event": "gen_start", "sid": "a", "name": "x"})
    stop = time.monotonic() + 1.5
    sent = 0

    def flood():
        nonlocal sent
        text = ""
        while time.monotonic() < stop:
            text += "字"
            feed.on_program_event({"event": "gen_chunk", "sid": "a", "name": "x", "delta": "字", "text": text,
                                   "meta_info": {"id": "r1", "completion_tokens": len(text)}})
            sent += 1

    producer = threading.Thread(target=flood)
    producer.start()
    producer.join()
    feed.finish("done")
    assert sent > 1000
    assert widget.max_rate(1.0) <= 21
    assert widget.streams["x"]["n_tokens"] == sent and len(widget.streams["x"]["text"]) == sent
    assert len(widget.streams["x"]["tokens"]) == 2000  # the contract's cap; the text stays whole


# ---------------------------------------------------------------------------------------------- static fallbacks
def test_token_stream_static_fallback_is_escaped_and_keeps_chinese():
    from sgl_jupyter.jupyter.widgets import TokenStream

    w = TokenStream()
    w.push(streams={"answer": {"text": "上海<b>晴</b>", "tokens": [{"t": "上海", "lp": -0.1}, {"t": "<b>晴</b>", "lp": -3.0}],
                               "n_tokens": 2, "tokens_per_s": 12.5, "finish_reason": "stop", "done": True}},
           order=["answer"], status="done")
    data, _ = w._repr_mimebundle_()
    assert "上海<b>晴</b>" in data["text/plain"] and "finish: stop" in data["text/plain"]
    assert "上海" in data["text/html"] and "&lt;b&gt;晴&lt;/b&gt;" in data["text/html"]
    assert "<b>晴" not in data["text/html"]
    assert 'title="logprob -3.000"' in data["text/html"]
    assert "application/vnd.jupyter.widget-view+json" in data


def test_radix_tree_static_fallback_lists_every_node(kernel_engine):
    from sgl_jupyter.jupyter.widgets import RadixTreeView

    kernel_engine.generate("静态回退测试:你好", {"max_new_tokens": 1})
    snap = kernel_engine.cache_snapshot()
    view = RadixTreeView()
    view.push(tree=snap, highlight=[])
    data, _ = view._repr_mimebundle_()
    nodes = [n for n in snap["nodes"] if n["id"] > 0]
    assert data["text/html"].count('class="sgl-node"') == len(nodes)
    for n in nodes:
        assert f'data-node-id="{n["id"]}"' in data["text/html"]
    assert f"{len(nodes)} nodes" in data["text/plain"]
    assert "静态回退测试" in data["text/plain"]


def test_throughput_static_fallback_has_a_png():
    from sgl_jupyter.jupyter.widgets import ThroughputChart

    chart = ThroughputChart()
    assert "no steps" in chart._repr_mimebundle_()[0]["text/plain"]
    chart.push(points=[{"t": 0.1 * i, "tokens_per_s": 10.0 * i, "running": i % 3, "queued": 0, "hit_rate": 0.5}
                       for i in range(20)])
    data, _ = chart._repr_mimebundle_()
    assert base64.b64decode(data["image/png"]).startswith(b"\x89PNG")
    assert "190.0 tok/s" in data["text/plain"]
    assert 'class="sgl-tps"' in data["text/html"] and "data:image/png;base64," in data["text/html"]


@pytest.mark.parametrize("name", ["token_stream", "radix_tree", "throughput"])
def test_each_widget_has_a_front_end_module(name):
    from sgl_jupyter.jupyter import widgets

    path = widgets.esm_path(name)
    assert path.is_file()
    source = path.read_text(encoding="utf-8")
    assert "export default" in source and "render" in source
