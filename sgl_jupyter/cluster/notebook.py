"""``%sgl_serve --replicas N`` in a notebook: N new engine replicas on Ray Serve behind the router, with
the kernel's engine settings when an engine is loaded (the kernel's own engine is not one of them: it
stays the kernel's). The kernel becomes the Ray driver. The cluster is the kernel's until
``%sgl_serve --stop`` (or the kernel ends): ``%sgl_connect`` to its URL, ``%sgl_load`` and ``%sgl_unload``
leave it running, since it does not serve the kernel's engine."""
from __future__ import annotations

from typing import Any, Optional

from IPython.core.error import UsageError

_RUNNING: dict[int, Any] = {}  # id(session) -> ClusterServer


def running_replicas(session: Any) -> Optional[Any]:
    return _RUNNING.get(id(session))


def serve_replicas(session: Any, host: str, port: int, api_key: Optional[str], replicas: int, policy: str,
                   ray_address: Optional[str]) -> Any:
    """Start the cluster for this kernel session; returns it (``.url``, ``.stop()``)."""
    from ..server.launch import StartupError
    from .launch import ClusterOptions, ClusterServer

    running = running_replicas(session)
    if running is not None:
        raise UsageError(f"already serving {running.options.replicas} replicas at {running.url}; stop them first "
                         "with %sgl_serve --stop")
    engine = getattr(session, "engine", None)
    engine_kwargs: dict = dict(engine.args.to_dict()) if engine is not None else {}
    engine_kwargs.pop("extra", None)
    options = ClusterOptions(replicas=replicas, policy=policy, ray_address=ray_address, host=host, port=port,
                             api_key=api_key)
    try:
        cluster = ClusterServer(engine_kwargs, options).start()
    except (StartupError, OSError, ValueError) as e:
        raise UsageError(f"%sgl_serve --replicas {replicas}: {e}") from None
    except RuntimeError as e:  # Ray Serve: a replica failed to start
        raise UsageError(f"%sgl_serve --replicas {replicas}: the engine replicas failed to start: "
                         f"{str(e)[-1500:]}") from None
    _RUNNING[id(session)] = cluster
    return cluster


def stop_replicas(session: Any) -> bool:
    """Stop this session's cluster; True if one was running."""
    cluster = _RUNNING.pop(id(session), None)
    if cluster is None:
        return False
    cluster.stop()
    return True
