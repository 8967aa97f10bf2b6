"""The IPython magics: ``%sgl_load``, ``%sgl_unload``, ``%sgl_connect``, ``%sgl_serve``, ``%sgl_cache``,
``%sgl_stats``, ``%sgl_flush`` and the ``%%sgl`` cell magic. ``%magic?`` shows each one's arguments."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display
from IPython.utils.text import dedent

from .cell import CellOptions, SglCell
from .session import KernelSession


def _identifier(value: Optional[str], flag: str) -> None:
    if value is not None and (not value.isidentifier() or value == "s"):
        raise UsageError(f"{flag} needs a Python variable name (not 's'), got {value!r}")


@magics_class
class SglMagics(Magics):
    def __init__(self, shell: Any, session: KernelSession):
        super().__init__(shell)
        self.session = session

    # ------------------------------------------------------------------ engines
    @magic_arguments()
    @argument("model_path", nargs="?", default=None,
              help="HF model directory (config.json, *.safetensors, tokenizer); none: the embedded model")
    @argument("engine_flags", nargs="*", metavar="--FLAG VALUE",
              help="engine flags, spelled as for launch_server: --dtype, --device, --max-total-tokens, "
                   "--mem-fraction-static, --max-running-requests (--max-num-sequences), --context-length, "
                   "--chunked-prefill-size, --disable-radix-cache, --attention-backend, --random-seed, ... "
                   "(`%sgl_load --help`: the common ones; `--help-all`: every one)")
    @line_magic
    def sgl_load(self, line: str = "") -> None:
        """Load a model into this kernel's engine and make it the backend of %%sgl cells and programs.

        Shows a progress bar while loading, then a summary card (model, parameters, dtype, device, KV capacity).
        Loading again replaces the current engine.
        """
        from .engine_flags import parse_engine_flags
        from .loading import load_engine

        model_path, kwargs, want_help = parse_engine_flags(_split(line))
        if want_help:  # argparse printed the full list of flags
            return
        if self.session.server is not None:
            raise UsageError(f"the engine is serving at {self.session.server.url}: stop it first (%sgl_serve --stop)")
        _precheck(model_path, kwargs)  # a typo must not cost the model that is loaded now
        self.session.unload()
        try:
            engine = load_engine(model_path, kwargs, warmup=self.session.config.load_warmup)
        except (ValueError, OSError) as e:  # InvalidRequestError / ModelLoadError and missing files
            raise UsageError(f"%sgl_load failed: {e}") from None
        except Exception as e:  # noqa: BLE001
            if type(e).__module__.startswith("sgl_jupyter."):
                raise UsageError(f"%sgl_load failed: {type(e).__name__}: {e}") from None
            raise
        self.session.set_engine(engine)
        from .cards import model_card

        display(model_card(self.session.server_info()))

    @line_magic
    def sgl_unload(self, line: str = "") -> None:
        """Shut the engine down (or forget the remote server), stopping %sgl_serve and live widgets."""
        if not self.session.unload():
            print("nothing was loaded")
        else:
            print("unloaded")

    @magic_arguments()
    @argument("url", help="the server, e.g. http://localhost:30000 (SGLang's native API: ours or real SGLang)")
    @argument("--api-key", default=None, help="sent as `Authorization: Bearer KEY`")
    @line_magic
    def sgl_connect(self, line: str = "") -> None:
        """Use a remote SGLang-compatible server as the backend of %%sgl cells and programs."""
        from sgl_jupyter.lang import RuntimeEndpoint

        args = parse_argstring(self.sgl_connect, line)
        try:
            endpoint = RuntimeEndpoint(args.url, api_key=args.api_key)
        except Exception as e:  # noqa: BLE001 - bad URL, refused connection, 401: say which
            raise UsageError(f"%sgl_connect {args.url}: {e}") from None
        self.session.set_endpoint(endpoint)
        from .cards import endpoint_card

        try:
            info = endpoint.get_server_info()
        except Exception:  # noqa: BLE001 - the card is a courtesy; the connection works
            info = endpoint.model_info
        display(endpoint_card(endpoint.base_url, info))

    @magic_arguments()
    @argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0: every interface)")
    @argument("--port", type=int, default=30000, help="TCP port (default 30000)")
    @argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on every request")
    @argument("--stop", action="store_true", help="stop the server")
    @argument("--replicas", "--dp-size", type=int, default=1,
              help="N > 1: serve N new engine replicas (the kernel's engine settings) on Ray Serve behind a "
                   "cache-aware router instead (pip install sgl-jupyter[cluster])")
    @argument("--router-policy", default="cache-aware", choices=("cache-aware", "round-robin", "least-load"),
              help="with --replicas: how the router picks a replica")
    @argument("--ray-address", default=None, help="with --replicas: join this Ray cluster ('auto')")
    @line_magic
    def sgl_serve(self, line: str = "") -> None:
        """Serve the kernel's engine over HTTP (OpenAI- and SGLang-compatible) from a background thread."""
        args = parse_argstring(self.sgl_serve, line)
        if args.stop:
            stopped = self.session.stop_server()
            if "sgl_jupyter.cluster.notebook" in sys.modules:  # %sgl_serve --replicas ran in this kernel
                stopped = sys.modules["sgl_jupyter.cluster.notebook"].stop_replicas(self.session) or stopped
            print("server stopped" if stopped else "no server was running")
            return
        if not 0 < args.port < 65536:
            raise UsageError(f"--port must be in 1..65535, got {args.port}")
        if args.replicas < 1:
            raise UsageError(f"--replicas must be at least 1, got {args.replicas}")
        if args.replicas > 1 or args.ray_address:
            from sgl_jupyter.cluster.notebook import serve_replicas

            server = serve_replicas(self.session, args.host, args.port, args.api_key, args.replicas,
                                    args.router_policy, args.ray_address)
            print(f"serving at {server.url}: {args.replicas} replicas on Ray Serve, router policy "
                  f"{args.router_policy}" + (" (API key required)" if args.api_key else "") +
                  f"; use it here with %sgl_connect {server.url}")
            return
        server = self.session.serve(args.host, args.port, args.api_key)
        print(f"serving at {server.url}" + (" (API key required)" if args.api_key else ""))

    @line_magic
    def sgl_flush(self, line: str = "") -> None:
        """Drop the prefix (radix) cache. Refused while requests are running."""
        if not self.session.flush_cache():
            print("flush refused: requests are running; try again when they finish")
        else:
            print("cache flushed")

    # ------------------------------------------------------------------ widgets
    @magic_arguments()
    @argument("--max-nodes", type=int, default=None, help="nodes shown before the rest collapse (config: "
                                                          "SGL.tree_max_nodes)")
    @line_magic
    def sgl_cache(self, line: str = "") -> None:
        """The radix (prefix) cache tree, live: node token counts, text, ref counts, recent hits.

        The widget is also stored in `_sgl_cache`.
        """
        from .feeds import RadixTreeFeed
        from .widgets import RadixTreeView

        args = parse_argstring(self.sgl_cache, line)
        engine = self.session.require_engine("%sgl_cache")
        max_nodes = args.max_nodes if args.max_nodes is not None else self.session.config.tree_max_nodes
        if max_nodes < 1:
            raise UsageError(f"--max-nodes must be >= 1, got {max_nodes}")
        view = RadixTreeView(max_nodes=max_nodes)
        feed = RadixTreeFeed(view, engine, self.session.pump, self.session.tap,
                             interval=self.session.config.tree_interval)
        view.feed = feed
        self.session.trees.append(view)
        self.session.on_unload(feed.close)
        view.add_closer(feed.close)
        self.shell.user_ns["_sgl_cache"] = view
        self.session.show(view, self.shell)

    @magic_arguments()
    @argument("--window", type=float, default=None, help="seconds of history shown, 0: all since the model loaded "
                                                          "(config: SGL.chart_window)")
    @line_magic
    def sgl_stats(self, line: str = "") -> Any:
        """Throughput, running/queued requests and cache hit rate over time since the model loaded (live), and a
        DataFrame of metrics whose generated tokens and hit rate are the chart's last point.

        The chart is also stored in `_sgl_stats`.
        """
        from .feeds import ThroughputFeed
        from .stats import metrics_frame
        from .widgets import ThroughputChart

        args = parse_argstring(self.sgl_stats, line)
        if self.session.kind is None:
            raise UsageError("nothing is loaded: run %sgl_load or %sgl_connect first")
        cfg = self.session.config
        window = args.window if args.window is not None else cfg.chart_window
        if window < 0:
            raise UsageError(f"--window must be >= 0 seconds (0: all since load), got {window}")
        chart = ThroughputChart(window_s=window)
        if self.session.engine is not None:
            feed = ThroughputFeed(chart, self.session.pump, engine=self.session.engine, tap=self.session.tap,
                                  interval=cfg.chart_interval)
        else:
            feed = ThroughputFeed(chart, self.session.pump, server_info=self.session.poll_server_info)
        chart.feed = feed
        self.session.charts.append(chart)
        self.session.on_unload(feed.close)
        chart.add_closer(feed.close)
        self.shell.user_ns["_sgl_stats"] = chart
        self.session.show(chart, self.shell)
        return metrics_frame(self.session)

    # ------------------------------------------------------------------ %%sgl
    @magic_arguments()
    @argument("--out", default=None, help="variable for the final program state (default: _sgl; SGL.out)")
    @argument("--no-stream", action="store_true", help="no live token stream: run, then show the final text")
    @argument("--temperature", type=float, default=None, help="default temperature of every gen (SGL.temperature)")
    @argument("--max-tokens", type=int, default=None, help="default max_tokens of every gen (SGL.max_tokens)")
    @argument("--seed", type=int, default=None, help="sampling seed (SGL.seed)")
    @argument("--program", default=None, help="also define the body as an @function program named PROGRAM "
                                              "(its variables are then local to it)")
    @argument("--logprobs", action="store_true", help="ask for token logprobs: the widget colours tokens by them "
                                                      "(SGL.logprobs; costs jump-forward on regex/JSON gens)")
    @argument("--no-widget", action="store_true", help="stream without the live TokenStream widget (headless)")
    @cell_magic
    def sgl(self, line: str, cell: str) -> None:
        """Run the cell as the body of an SGLang program, with `s` bound to a fresh program state.

        Every gen streams into a TokenStream widget; the final state is stored in `_sgl` (or --out NAME) and
        its text shown. A cell that only defines @function programs simply defines them. Ctrl-C aborts the
        program's requests. Example::

            %%sgl --max-tokens 64
            s += user("上海今天天气如何?") + assistant(gen("answer"))
        """
        args = parse_argstring(self.sgl, line)
        cfg = self.session.config
        _identifier(args.out, "--out")
        _identifier(args.program, "--program")
        if args.max_tokens is not None and args.max_tokens < 0:
            raise UsageError(f"--max-tokens must be >= 0, got {args.max_tokens}")
        if args.temperature is not None and args.temperature < 0:
            raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
        options = CellOptions(out=args.out or cfg.out, stream=cfg.stream and not args.no_stream,
                              temperature=args.temperature, max_tokens=args.max_tokens, program=args.program,
                              seed=args.seed, logprobs=cfg.logprobs or args.logprobs,
                              widget=not args.no_widget)
        SglCell(self.shell, self.session, cell, options).run()


def _precheck(model_path: Optional[str], kwargs: dict) -> None:
    """Check the model directory before anything is unloaded (the flags were checked by their parser)."""
    from sgl_jupyter.engine.loader import check_model_dir

    if model_path is None:
        return
    if not Path(model_path).expanduser().exists():  # the loader's message would name --model-path
        raise UsageError(f"%sgl_load: model path {model_path!r} does not exist: give %sgl_load an HF model "
                         "directory (config.json, *.safetensors, tokenizer), or no path for the embedded model")
    try:
        check_model_dir(model_path, kwargs.get("load_format", "auto"))
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"%sgl_load: {e}") from None


def _split(line: str) -> list[str]:
    from IPython.utils.process import arg_split

    return arg_split(dedent(line).strip())
