"""``%sgl_serve --replicas N`` in a notebook: N new engine replicas on Ray Serve behind the router, with
the kernel's engine settings when an engine is loaded (the kernel's own engine is not one of them: it
stays the kernel's). The kernel becomes the Ray driver; ``%sgl_serve --stop`` stops the cluster."""
from __future__ import annotations

from typing import Any, Optional

from IPython.core.error import UsageError


def serve_replicas(session: Any, host: str, port: int, api_key: Optional[str], replicas: int, policy: str,
                   ray_address: Optional[str]) -> Any:
    """Start the cluster and record it as the session's server (``session.server.url``, ``.stop()``)."""
    from ..server.launch import StartupError
    from .launch import ClusterOptions, ClusterServer

    if session.server is not None:
        raise UsageError(f"already serving at {session.server.url}; stop it first with %sgl_serve --stop")
    engine = getattr(session, "engine", None)
    engine_kwargs: dict = dict(engine.args.to_dict()) if engine is not None else {}
    engine_kwargs.pop("extra", None)
    options = ClusterOptions(replicas=replicas, policy=policy, ray_address=ray_address, host=host, port=port,
                             api_key=api_key)
    try:
        session.server = ClusterServer(engine_kwargs, options).start()
    except (StartupError, OSError, ValueError) as e:
        raise UsageError(f"%sgl_serve --replicas {replicas}: {e}") from None
    except RuntimeError as e:  # Ray Serve: a replica failed to start
        raise UsageError(f"%sgl_serve --replicas {replicas}: the engine replicas failed to start: "
                         f"{str(e)[-1500:]}") from None
    return session.server
