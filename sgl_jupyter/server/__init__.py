"""HTTP server: OpenAI-compatible and SGLang-native APIs over an in-process Engine.

``create_app(engine)`` builds the ASGI app; ``serve_in_thread(engine, port=...)`` serves it from a
background thread (``%sgl_serve``); ``python -m sgl_jupyter.launch_server`` is the CLI.
"""
from .app import create_app
from .thread import PortInUseError, ServerThread, bind_socket, serve_in_thread

__all__ = ["create_app", "ServerThread", "serve_in_thread", "bind_socket", "PortInUseError"]
