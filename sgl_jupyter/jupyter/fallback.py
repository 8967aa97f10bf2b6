"""Static renderings of the widgets' state: text/plain, HTML and (chart) PNG.

What plain IPython, nbconvert and notebooks saved without widget state show. Pure functions of the
synced state (the same dicts the front end gets), so they can be tested without a browser.
"""
from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Optional

_STYLE = ("font-family: var(--jp-code-font-family, monospace); font-size: 12px; "
          "border: 1px solid #ddd; border-radius: 4px; padding: 6px; margin: 2px 0;")


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _lp_colour(lp: Optional[float]) -> str:
    """Background for a token of log-probability `lp`: clear when likely, red when unlikely."""
    if lp is None or not math.isfinite(lp):
        return "transparent"
    p = math.exp(min(lp, 0.0))
    alpha = round((1.0 - p) * 0.6, 3)
    return f"rgba(220, 60, 60, {alpha})"


# ---------------------------------------------------------------------------------------------- TokenStream
def _stream_footer(s: dict) -> str:
    parts = [f"{s.get('n_tokens', 0)} tokens", f"{s.get('tokens_per_s', 0.0):.1f} tok/s"]
    if s.get("finish_reason"):
        parts.append(f"finish: {s['finish_reason']}")
    elif not s.get("done"):
        parts.append("running")
    return ", ".join(parts)


def token_stream_text(state: dict) -> str:
    streams, order = state.get("streams", {}), state.get("order", [])
    head = f"TokenStream [{state.get('status', '')}]"
    if state.get("error"):
        head += f" error: {state['error']}"
    lines = [head]
    if not order:
        lines.append("  (no generations)")
    for name in order:
        s = streams.get(name, {})
        lines.append(f"--- {name} ({_stream_footer(s)})")
        lines.append(s.get("text", ""))
    return "\n".join(lines)


def token_stream_html(state: dict) -> str:
    streams, order = state.get("streams", {}), state.get("order", [])
    status = _esc(state.get("status", ""))
    out = [f'<div class="sgl-static sgl-static-token-stream" style="{_STYLE}">',
           f'<div style="color:#666">TokenStream &middot; <span class="sgl-status">{status}</span></div>']
    if state.get("error"):
        out.append(f'<pre style="color:#b00; white-space:pre-wrap">{_esc(state["error"])}</pre>')
    if not order:
        out.append('<div style="color:#999">(no generations)</div>')
    for name in order:
        s = streams.get(name, {})
        tokens = s.get("tokens") or []
        text = s.get("text", "")
        shown = "".join(tok.get("t", "") for tok in tokens)
        spans = []
        if tokens and text.endswith(shown):
            if len(shown) < len(text):  # tokens were truncated: the head of the text, uncoloured
                spans.append(_esc(text[:len(text) - len(shown)]))
            for tok in tokens:
                lp = tok.get("lp")
                title = f' title="logprob {lp:.3f}"' if isinstance(lp, (int, float)) else ""
                spans.append(f'<span class="sgl-token" style="background:{_lp_colour(lp)}"{title}>'
                             f'{_esc(tok.get("t", ""))}</span>')
        else:
            spans.append(_esc(text))
        out.append(f'<div class="sgl-stream" data-name="{_esc(name)}" style="margin-top:4px">'
                   f'<div style="font-weight:bold">{_esc(name)}</div>'
                   f'<pre style="white-space:pre-wrap; margin:2px 0">{"".join(spans)}</pre>'
                   f'<div style="color:#666">{_esc(_stream_footer(s))}</div></div>')
    out.append("</div>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------- RadixTreeView
def _preview(text: str, limit: int = 40) -> str:
    text = text.replace("\n", "\u21b5")
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _children(tree: dict) -> dict[int, list[dict]]:
    kids: dict[int, list[dict]] = {}
    for node in tree.get("nodes", []):
        kids.setdefault(node.get("parent", -1), []).append(node)
    return kids


def _tree_header(tree: dict) -> str:
    n = sum(1 for x in tree.get("nodes", []) if x.get("id", 0) > 0)
    return (f"RadixTree: {n} nodes, {tree.get('total_tokens', 0)} tokens cached "
            f"({tree.get('evictable_tokens', 0)} evictable), hit rate {100 * tree.get('hit_rate', 0.0):.1f}% "
            f"({tree.get('hit_tokens', 0)} hit / {tree.get('miss_tokens', 0)} miss tokens)")


def radix_tree_text(tree: dict, highlight: list[int] = (), max_lines: int = 60) -> str:
    if not tree:
        return "RadixTree: (no snapshot yet)"
    kids, hot = _children(tree), set(highlight)
    lines = [_tree_header(tree)]

    def walk(node_id: int, depth: int) -> None:
        for node in kids.get(node_id, []):
            if len(lines) > max_lines:
                return
            mark = "*" if node["id"] in hot else " "
            lines.append(f"{'  ' * depth}{mark}[{node.get('tokens', 0)} tok, ref {node.get('ref', 0)}, "
                         f"hits {node.get('hits', 0)}] {_preview(node.get('text', ''))}")
            walk(node["id"], depth + 1)

    walk(0, 1)
    if len(lines) > max_lines:
        lines = lines[:max_lines] + ["  \u2026"]
    return "\n".join(lines)


def radix_tree_html(tree: dict, highlight: list[int] = ()) -> str:
    if not tree:
        return f'<div class="sgl-static sgl-static-radix-tree" style="{_STYLE}">RadixTree: (no snapshot yet)</div>'
    kids, hot = _children(tree), set(highlight)

    def walk(node_id: int) -> str:
        items = []
        for node in kids.get(node_id, []):
            bg = "background:#fff3b0;" if node["id"] in hot else ""
            items.append(
                f'<li class="sgl-node" data-node-id="{int(node["id"])}" style="{bg}">'
                f'<span style="color:#666">[{int(node.get("tokens", 0))} tok, ref {int(node.get("ref", 0))}, '
                f'hits {int(node.get("hits", 0))}]</span> <code>{_esc(_preview(node.get("text", ""), 60))}</code>'
                f'{walk(node["id"])}</li>')
        return f'<ul style="margin:0; padding-left:16px">{"".join(items)}</ul>' if items else ""

    return (f'<div class="sgl-static sgl-static-radix-tree" style="{_STYLE}">'
            f'<div style="color:#666">{_esc(_tree_header(tree))}</div>{walk(0)}</div>')


# ---------------------------------------------------------------------------------------------- ThroughputChart
def throughput_text(points: list[dict]) -> str:
    if not points:
        return "ThroughputChart: (no steps yet)"
    last = points[-1]
    generated = f", {int(last['generated'])} tokens generated" if "generated" in last else ""
    return (f"ThroughputChart: {len(points)} points over {last['t'] - points[0]['t']:.1f} s; last: "
            f"{last['tokens_per_s']:.1f} tok/s, running {last['running']}, queued {last['queued']}, "
            f"cache hit rate {100 * last['hit_rate']:.1f}%{generated}; "
            f"peak {max(p['tokens_per_s'] for p in points):.1f} tok/s")


def throughput_png(points: list[dict], window_s: float = 0.0) -> Optional[bytes]:
    """A PNG of the chart (matplotlib, Agg backend), or None without points."""
    if not points:
        return None
    from matplotlib.figure import Figure

    t = [p["t"] for p in points]
    fig = Figure(figsize=(6.4, 2.4), dpi=80)
    ax = fig.add_subplot(111)
    ax.plot(t, [p["tokens_per_s"] for p in points], color="#1f77b4", label="tokens/s")
    ax.set_xlabel("s")
    ax.set_ylabel("tokens/s")
    ax2 = ax.twinx()
    ax2.plot(t, [p["running"] for p in points], color="#2ca02c", label="running")
    ax2.plot(t, [p["queued"] for p in points], color="#ff7f0e", label="queued")
    ax2.plot(t, [p["hit_rate"] * max(1, max(p["running"] for p in points)) for p in points], color="#9467bd",
             linestyle="--", label="hit rate (scaled)")
    ax2.set_ylabel("requests")
    if window_s > 0 and t[-1] - t[0] > window_s:
        ax.set_xlim(t[-1] - window_s, t[-1])
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [x.get_label() for x in lines], loc="upper left", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def throughput_html(points: list[dict], png: Optional[bytes]) -> str:
    body = f'<div class="sgl-tps">{_esc(throughput_text(points))}</div>'
    if png is not None:
        body += f'<img alt="throughput chart" src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'
    return f'<div class="sgl-static sgl-static-throughput" style="{_STYLE}">{body}</div>'
