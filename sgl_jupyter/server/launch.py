"""``python -m sgl_jupyter.launch_server``: check what can fail fast (arguments, port, model directory),
load the engine, serve it with uvicorn, warm it up, and only then say "ready" with the URL.

Start-up failures end with exit status 1 and one message that says what to do (the seed article's
error table: missing config.json / empty or unreadable directory, address already in use, out of
memory); argument errors end with argparse's usage message and status 2.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, Optional, Sequence

LOG_FORMAT = "[%(asctime)s] %(levelname)s %(name)s: %(message)s"
OOM_ADVICE = ("lower --max-total-tokens (KV-cache size) or --mem-fraction-static on GPU / --cpu-kv-budget-gb on "
              "CPU, lower --max-running-requests (alias --max-num-sequences), or use a smaller model")
WARMUP_TIMEOUT_S = 600.0

logger = logging.getLogger("sgl_jupyter.server")


class StartupError(Exception):
    """A start-up failure whose message tells the user what to do."""


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "%s", (message,), None)
    for h in logging.getLogger("sgl_jupyter").handlers:
        if isinstance(h, logging.FileHandler):  # stderr already has it
            h.handle(record)
    return 1


def setup_logging(level: str, log_file: Optional[str]) -> list[logging.Handler]:
    """Our log lines to stderr (and --log-file): the package logger only, never the root logger, so
    an embedding program's logging is left alone."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        try:
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        except OSError as e:
            raise StartupError(f"cannot write --log-file {log_file}: {e.strerror or e}; check the directory "
                               "exists and is writable") from e
    for h in handlers:
        h.setFormatter(logging.Formatter(LOG_FORMAT))
    pkg = logging.getLogger("sgl_jupyter")
    pkg.handlers = handlers
    pkg.setLevel(level.upper())
    pkg.propagate = False
    return handlers


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    text = f"{type(e).__name__}: {e}".lower()
    return any(s in text for s in ("out of memory", "outofmemory", "can't allocate memory",
                                   "cannot allocate memory", "defaultcpuallocator"))


def load_engine(engine_kwargs: dict[str, Any]) -> Any:
    """The Engine, or a ``StartupError`` that says which flag to change."""
    from ..engine.errors import InvalidRequestError, KVCacheOOMError, ModelLoadError
    from ..engine.loader import check_model_dir

    path = engine_kwargs.get("model_path")
    try:
        if path:
            check_model_dir(path, engine_kwargs.get("load_format", "auto"))
        from ..engine.engine import Engine

        return Engine(**engine_kwargs)
    except KVCacheOOMError as e:
        raise StartupError(f"out of memory: {e}") from e
    except ModelLoadError as e:
        hint = f" Check it with `ls -l {path}`." if path else ""
        raise StartupError(f"cannot load the model: {e}.{hint} --model-path must be a HuggingFace model "
                           "directory (config.json, *.safetensors, tokenizer files)") from e
    except InvalidRequestError as e:
        raise StartupError(f"invalid engine arguments: {e}") from e
    except BaseException as e:  # noqa: BLE001 - anything else at start-up is reported, OOM with advice
        if _is_oom(e):
            raise StartupError(f"out of memory while loading the model or allocating the KV cache "
                               f"({type(e).__name__}: {str(e)[:300]}): {OOM_ADVICE}") from e
        raise


def _announce_when_ready(server: Any, host: str, port: int, url: str, api_key: Optional[str], engine: Any,
                         outcome: dict) -> None:
    """Wait until uvicorn listens, send one real request through HTTP (as SGLang's warm-up does), then
    print the ready line. If the warm-up fails the server stops: it would not serve anyway."""
    import httpx

    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.02)
    logging.getLogger("uvicorn.error").info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)", host, port)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        res = httpx.post(url + "/generate", headers=headers, timeout=WARMUP_TIMEOUT_S,
                         json={"text": "The capital city of France is",
                               "sampling_params": {"max_new_tokens": 1, "temperature": 0}})
        res.raise_for_status()
    except Exception as e:  # noqa: BLE001
        outcome["error"] = f"the warm-up request failed ({e}); the server is not usable, stopping"
        logger.error("%s", outcome["error"])
        server.should_exit = True
        return
    name = engine.args.served_model_name or engine.args.model_path
    print(f"The server is fired up and ready to roll! sgl_jupyter is serving {name} at {url} "
          f"(OpenAI API: {url}/v1, SGLang API: {url}/generate, metrics: {url}/metrics)", flush=True)
    logger.info("ready at %s", url)


def serve(engine: Any, sock: Any, host: str, port: int, api_key: Optional[str], log_level: str,
          extra_handlers: Sequence[logging.Handler], max_body_bytes: int) -> int:
    import uvicorn

    from .app import create_app
    from .thread import display_host

    app = create_app(engine, api_key=api_key, max_body_bytes=max_body_bytes)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5, lifespan="on")
    # uvicorn's start-up lines ("Application startup complete.") stay visible at every --log-level, as
    # the seed article shows them; per-request access lines follow --log-level.
    startup_logger = logging.getLogger("uvicorn.error")
    if startup_logger.getEffectiveLevel() > logging.INFO:
        startup_logger.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.access"):
        for h in extra_handlers:
            if isinstance(h, logging.FileHandler):
                logging.getLogger(name).addHandler(h)
    server = uvicorn.Server(config)
    url = f"http://{display_host(host)}:{port}"
    outcome: dict = {}
    threading.Thread(target=_announce_when_ready, args=(server, host, port, url, api_key, engine, outcome),
                     name="sgl-jupyter-warmup", daemon=True).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        logger.info("stopped by Ctrl-C")
    return 1 if "error" in outcome else 0


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m sgl_jupyter.launch_server") -> int:
    from .args import parse_args
    from .thread import bind_socket

    _, server_opts, engine_kwargs = parse_args(argv, prog)
    if server_opts["dp_size"] > 1 or server_opts["ray_address"]:
        from ..cluster.launch import main as cluster_main

        return cluster_main(server_opts, engine_kwargs, prog)
    host, port = server_opts["host"], server_opts["port"]
    try:
        handlers = setup_logging(engine_kwargs["log_level"], server_opts["log_file"])
        # The port first: finding it taken after a minute of model loading is the wrong order.
        sock = bind_socket(host, port)
    except (StartupError, OSError) as e:
        return _fail(prog, str(e))
    port = sock.getsockname()[1]
    try:
        engine = load_engine(engine_kwargs)
    except StartupError as e:
        sock.close()
        return _fail(prog, str(e))
    try:
        return serve(engine, sock, host, port, server_opts["api_key"], engine_kwargs["log_level"], handlers,
                     server_opts["max_body_bytes"])
    finally:
        engine.shutdown()
        sock.close()
