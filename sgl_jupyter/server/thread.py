"""Serve an already-running Engine over HTTP from a background thread (``%sgl_serve`` in a notebook,
tests), sharing the engine and its KV cache with the caller.

>>> server = serve_in_thread(engine, port=30000)      # returns once it can answer
>>> server.url
'http://127.0.0.1:30000'
>>> server.stop()
"""
from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from typing import Any, Optional

import uvicorn

from .app import create_app

logger = logging.getLogger(__name__)
uvicorn_logger = logging.getLogger("uvicorn.error")


class PortInUseError(OSError):
    """The port is taken; the message names it and says how to find the process."""


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind (host, port) now, before anything slow happens, so a taken port fails fast with a clear
    message; the bound socket is handed to uvicorn, so nothing can take the port in between."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PortInUseError(
                errno.EADDRINUSE,
                f"Address already in use: port {port} on {host} is taken by another process. Find it with "
                f"`lsof -i :{port}` (and stop it), or start on another port, e.g. --port {_next_port(port)}") from e
        if e.errno == errno.EADDRNOTAVAIL:
            raise OSError(e.errno, f"cannot bind to --host {host}: no network interface of this machine has "
                                   "that address; use 127.0.0.1 (this machine only) or 0.0.0.0 (all)") from e
        if e.errno == errno.EACCES:
            raise OSError(e.errno, f"permission denied binding port {port}: ports below 1024 need root; use "
                                   "e.g. --port 30000") from e
        raise
    except socket.gaierror as e:
        sock.close()
        raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve --host {host!r}: {e}") from e
    return sock


def _next_port(port: int) -> int:
    return port + 1 if 0 < port < 65535 else 30001


def display_host(host: str) -> str:
    """The address a client on this machine uses to reach a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class ServerThread:
    """uvicorn in a daemon thread over ``create_app(engine, ...)``; ``start()`` returns once it can
    serve, ``stop()`` shuts it down (open streams are cancelled and their requests aborted)."""

    def __init__(self, engine: Any, host: str = "127.0.0.1", port: int = 30000, api_key: Optional[str] = None,
                 served_model_name: Optional[str] = None, log_level: str = "warning",
                 sock: Optional[socket.socket] = None, **app_kwargs: Any):
        self.engine, self.host, self.port = engine, host, port
        self.app = create_app(engine, served_model_name=served_model_name, api_key=api_key, **app_kwargs)
        self.log_level = log_level
        self._sock = sock
        self.server: Optional[uvicorn.Server] = None
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    @property
    def url(self) -> str:
        return f"http://{display_host(self.host)}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and bool(self.server and self.server.started)

    def start(self, timeout: float = 60.0) -> "ServerThread":
        if self._thread is not None:
            raise RuntimeError("this ServerThread was already started; create a new one")
        if self._sock is None:
            self._sock = bind_socket(self.host, self.port)
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level=self.log_level, timeout_graceful_shutdown=3,
                                timeout_keep_alive=30, lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"sgl-jupyter-http-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the HTTP server failed to start: {self._error!r}") from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the HTTP server did not start within {timeout:.0f}s")
            time.sleep(0.01)
        uvicorn_logger.info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)", self.host, self.port)
        return self

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self._sock])
        except BaseException as e:  # noqa: BLE001 - reported by start()/stop()
            self._error = e
            logger.exception("the HTTP server thread stopped with an error")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving; the engine keeps running (it belongs to the caller)."""
        if self.server is not None:
            self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive() and self.server is not None:
                self.server.force_exit = True
                self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ServerThread({self.url}, running={self.running})"


def serve_in_thread(engine: Any, host: str = "127.0.0.1", port: int = 30000, api_key: Optional[str] = None,
                    **kwargs: Any) -> ServerThread:
    """Start serving ``engine`` at http://host:port in a background thread; returns the running server."""
    return ServerThread(engine, host=host, port=port, api_key=api_key, **kwargs).start()
