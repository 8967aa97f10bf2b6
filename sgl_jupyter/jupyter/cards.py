"""Small display objects: the model summary card of ``%sgl_load``, the endpoint/server cards, and a
cell's final text. Each has text/plain (terminal IPython, logs) and HTML (notebooks)."""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


@dataclass
class InfoCard:
    """A titled table of (label, value) rows."""

    title: str
    rows: list[tuple[str, Any]]
    css_class: str = "sgl-card"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.rows)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any):
        width = max((len(k) for k, _ in self.rows), default=0)
        text = "\n".join([self.title] + [f"  {k.ljust(width)}  {v}" for k, v in self.rows])
        cells = "".join(f'<tr><th style="text-align:left;padding-right:12px">{_esc(k)}</th>'
                        f'<td style="text-align:left" class="{self.css_class}-{_esc(k.lower().replace(" ", "_"))}">'
                        f'{_esc(v)}</td></tr>' for k, v in self.rows)
        page = (f'<div class="{self.css_class}" style="border:1px solid #ddd;border-radius:4px;padding:6px;'
                f'display:inline-block"><div style="font-weight:bold;margin-bottom:4px">{_esc(self.title)}</div>'
                f'<table>{cells}</table></div>')
        return {"text/plain": text, "text/html": page}


def _params(n: Any) -> str:
    if not isinstance(n, (int, float)) or n <= 0:
        return "?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit} ({int(n):,})"
    return str(int(n))


def model_card(info: dict) -> InfoCard:
    """The summary `%sgl_load` shows, from `engine.get_server_info()`."""
    return InfoCard("sgl_jupyter engine loaded", [
        ("model", info.get("served_model_name") or info.get("model_path")),
        ("parameters", _params(info.get("num_params"))),
        ("dtype", info.get("dtype")),
        ("device", info.get("device")),
        ("KV capacity", f"{int(info.get('max_total_num_tokens', 0)):,} tokens"),
        ("context length", f"{int(info.get('max_context_length', 0)):,} tokens"),
        ("max running requests", info.get("max_running_requests")),
        ("attention backend", info.get("attention_backend")),
        ("radix cache", "on" if info.get("radix_cache", True) else "off"),
        ("load time", f"{float(info.get('load_time_s', 0.0)):.1f} s"),
    ], css_class="sgl-model-card")


def endpoint_card(url: str, info: Any) -> InfoCard:
    info = info if isinstance(info, dict) else {}
    return InfoCard("sgl_jupyter connected to a server", [
        ("url", url),
        ("model", info.get("served_model_name") or info.get("model_path") or "?"),
        ("KV capacity", f"{info['max_total_num_tokens']:,} tokens" if "max_total_num_tokens" in info else "?"),
    ], css_class="sgl-endpoint-card")


# wrap long lines at spaces; break inside a word only if it alone is wider than the output
_WRAP = "white-space:pre-wrap; overflow-wrap:break-word; word-break:normal"


class FinalText:
    """The final text of a %%sgl cell's program state."""

    def __init__(self, text: str):
        self.text = text

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any):
        return {"text/plain": self.text,
                "text/html": f'<pre class="sgl-final-text" style="{_WRAP}">{_esc(self.text)}</pre>'}
