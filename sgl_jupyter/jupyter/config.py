"""`SGL`: the notebook's defaults, set with ``%config SGL.max_tokens = 256`` (a traitlets Configurable, so
``%config SGL`` lists every option with its help and IPython profiles can set them too)."""
from __future__ import annotations

from traitlets import Bool, CFloat, CInt, Unicode
from traitlets.config import Configurable


class SGL(Configurable):
    """Defaults for ``%%sgl`` cells and the widgets."""

    max_tokens = CInt(128, help="max_new_tokens of every gen that sets none (SGLang's default: 128).").tag(config=True)
    temperature = CFloat(1.0, help="temperature of every gen that sets none (SGLang's default: 1.0; 0 = greedy)."
                         ).tag(config=True)
    seed = CInt(None, allow_none=True, help="sampling seed of %%sgl runs (None: unseeded).").tag(config=True)
    stream = Bool(True, help="stream every gen of a %%sgl cell into a live TokenStream widget.").tag(config=True)
    logprobs = Bool(False, help="ask for token logprobs in %%sgl cells, so the widget colours tokens by logprob "
                    "(the engine then skips jump-forward on constrained gens: slower JSON/regex output)."
                    ).tag(config=True)
    show_logprobs = Bool(False, help="start TokenStream widgets with logprob colouring switched on.").tag(config=True)
    out = Unicode("_sgl", help="the variable a %%sgl cell stores its final program state in.").tag(config=True)
    widget_rate = CFloat(20.0, help="most messages a second each live widget sends to the front end.").tag(config=True)
    max_stream_tokens = CInt(2000, help="tokens a TokenStream keeps per stream (the text is always whole)."
                             ).tag(config=True)
    tree_max_nodes = CInt(200, help="nodes a RadixTreeView shows before collapsing the rest.").tag(config=True)
    tree_interval = CFloat(0.5, help="seconds between two radix-tree snapshots while the cache changes."
                           ).tag(config=True)
    chart_interval = CFloat(0.25, help="seconds between two ThroughputChart points while the engine runs."
                            ).tag(config=True)
    chart_window = CFloat(0.0, help="seconds of history a ThroughputChart shows (0: all since the model loaded)."
                          ).tag(config=True)
    load_warmup = Bool(True, help="%sgl_load runs one tiny generation after loading (first-call costs paid up front)."
                       ).tag(config=True)
