"""Start N engine replicas on Ray Serve behind the router, serving at http://host:port.

>>> cluster = ClusterServer({"model_path": None}, ClusterOptions(replicas=2, port=30000)).start()
>>> cluster.url                       # the same API as one server; /get_server_info lists the replicas
>>> cluster.stop()

Without ``ray_address`` Ray starts on this machine (and stops with us); ``ray_address="auto"`` joins the
running cluster (``ray start --head`` first) and leaves it running. One GPU per replica when replicas run
on CUDA (``tp_size`` GPUs with tensor parallelism), else CPU cores shared out among the replicas.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

from ..server.launch import StartupError

logger = logging.getLogger("sgl_jupyter.cluster")

RAY_MISSING = ("Ray Serve is not installed, and --dp-size/--replicas > 1 runs on it: "
               "pip install 'sgl-jupyter[cluster]'  (or pip install 'ray[serve]>=2.40')")
APP_NAME = "sgl_jupyter"
SERVE_LOGGING = {"log_level": "WARNING", "enable_access_log": False}
LOCAL_INIT_ATTEMPTS = 3
SERVE_STOP_TIMEOUT_S = 30.0


def _preselect_agent_ports() -> None:
    """Give Ray's node agents their ports up front. Left at 0, the raylet waits (a fixed ~30 s) for each
    agent to write the port it took, and on a machine with few busy cores the Python agents can take longer
    to start, failing the whole start ("The current node timed out during startup"). ``ray.init`` has no
    arguments for these ports (``ray start`` has), hence the wrappers on its parameters and on the raylet's
    command line (whose ``--dashboard_agent_listen_port`` flag Ray's Python side does not pass)."""
    from ray._private import parameter, services

    if getattr(parameter.RayParams.__init__, "_sgl_ports", False):
        return
    original_init, original_start = parameter.RayParams.__init__, services.start_ray_process

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        for name in ("metrics_agent_port", "metrics_export_port", "runtime_env_agent_port"):
            if not getattr(self, name, None):
                setattr(self, name, _free_port("127.0.0.1"))
        self.dashboard_agent_listen_port = _free_port("127.0.0.1")

    def start_ray_process(command: list, process_type: str, *args: Any, **kwargs: Any) -> Any:
        if process_type == "raylet":
            match = re.search(r"--listen-port=(\d+)", " ".join(command))
            if match and not any(c.startswith("--dashboard_agent_listen_port") for c in command):
                command = [*command, f"--dashboard_agent_listen_port={match.group(1)}"]
        return original_start(command, process_type, *args, **kwargs)

    init._sgl_ports = True  # type: ignore[attr-defined]
    parameter.RayParams.__init__ = init
    services.start_ray_process = start_ray_process


def _init_local_ray(num_cpus: int, kwargs: dict) -> None:
    """Start Ray on this machine. On a busy machine its agents can miss the raylet's fixed 30 s start-up
    window ("The current node timed out during startup"); that is retried, not reported at once."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    _preselect_agent_ports()
    for attempt in range(1, LOCAL_INIT_ATTEMPTS + 1):
        try:
            ray.init(num_cpus=num_cpus, object_store_memory=256 * 2**20, **kwargs)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception here
            ray.shutdown()
            if attempt == LOCAL_INIT_ATTEMPTS or "timed out during startup" not in str(e):
                raise StartupError(f"Ray did not start on this machine: {e}") from e
            logger.warning("Ray did not start (attempt %d of %d: %s); retrying", attempt, LOCAL_INIT_ATTEMPTS, e)


def require_ray() -> None:
    """Import Ray Serve or say how to install it."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as e:
        raise StartupError(f"{RAY_MISSING} ({e})") from None


@dataclass
class ClusterOptions:
    replicas: int = 2
    policy: str = "cache-aware"
    ray_address: Optional[str] = None
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: Optional[str] = None
    max_body_bytes: int = 32 * 2**20
    replica_cpus: Optional[float] = None  # default: this machine's cores shared out (CPU replicas)
    served_model_name: Optional[str] = None
    log_level: str = "warning"
    request_timeout_s: float = 900.0


def _free_port(host: str) -> int:
    from ..server.thread import bind_socket

    sock = bind_socket(host, 0)
    port = sock.getsockname()[1]
    sock.close()
    return port


class ClusterServer:
    """Ray (local or joined), Ray Serve's HTTP proxy on host:port, the router, N engine replicas."""

    def __init__(self, engine_kwargs: dict, options: ClusterOptions):
        self.engine_kwargs = dict(engine_kwargs)
        self.options = options
        self.port = options.port
        self._started_ray = False
        self._running = False

    @property
    def url(self) -> str:
        from ..server.thread import display_host

        return f"http://{display_host(self.options.host)}:{self.port}"

    @property
    def running(self) -> bool:
        return self._running

    def _placement(self) -> tuple[float, float]:
        """(num_cpus, num_gpus) per replica."""
        import ray

        opts, device = self.options, str(self.engine_kwargs.get("device") or "auto")
        gpus = float(ray.cluster_resources().get("GPU", 0))
        use_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
        if use_gpu:
            per = float(self.engine_kwargs.get("tp_size") or 1)
            if gpus < per * opts.replicas:
                raise StartupError(f"{opts.replicas} replicas x {per:.0f} GPU need {per * opts.replicas:.0f} GPUs; "
                                   f"the Ray cluster has {gpus:.0f}. Lower --dp-size, or add GPU nodes "
                                   "(ray start --address ...)")
            return opts.replica_cpus or 1.0, per
        cpus = float(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        return opts.replica_cpus or max(1.0, float(int(cpus // opts.replicas))), 0.0

    def start(self) -> "ClusterServer":
        require_ray()
        import ray
        from ray import serve

        from ..server.thread import bind_socket
        from .policies import make_policy
        from .replicas import ReplicaSpec, replica_deployment
        from .ingress import router_deployment
        from .router import RouterConfig

        opts = self.options
        make_policy(opts.policy, opts.replicas)  # an unknown policy fails before Ray starts
        if self.port == 0:
            self.port = _free_port(opts.host)
        else:
            bind_socket(opts.host, self.port).close()  # a taken port fails now, with the usual message
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                      "log_to_driver": True, "namespace": "sgl_jupyter"}
            if opts.ray_address:
                try:
                    ray.init(address=opts.ray_address, **kwargs)
                except (ConnectionError, RuntimeError, ValueError) as e:
                    raise StartupError(f"cannot join the Ray cluster at --ray-address {opts.ray_address}: {e}. Start "
                                       "one with `ray start --head`, or leave --ray-address out to start Ray "
                                       "here") from e
            else:
                _init_local_ray(max(os.cpu_count() or 1, opts.replicas), kwargs)
                self._started_ray = True
        try:
            num_cpus, num_gpus = self._placement()
            serve.start(http_options={"host": opts.host, "port": self.port},
                        logging_config=SERVE_LOGGING)
            env = {"OMP_NUM_THREADS": str(int(num_cpus))} if not num_gpus else {}
            replicas = [replica_deployment(ReplicaSpec(self.engine_kwargs, i, opts.served_model_name, num_cpus,
                                                       num_gpus, opts.log_level, env))
                        for i in range(opts.replicas)]
            router = router_deployment(opts.api_key, opts.max_body_bytes,
                                       RouterConfig(policy=opts.policy, request_timeout_s=opts.request_timeout_s))
            serve.run(router.bind(replicas), name=APP_NAME, route_prefix="/", logging_config=SERVE_LOGGING)
            self._wait_http()
        except BaseException:
            self.stop()
            raise
        self._running = True
        return self

    def _wait_http(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise StartupError(f"the router did not answer at {self.url}/health within {timeout:.0f}s")
            time.sleep(0.2)

    def stop(self) -> None:
        """Delete the application; stop Serve and Ray too if we started Ray."""
        self._running = False
        try:
            import ray
            from ray import serve
        except ImportError:
            return
        if not ray.is_initialized():
            return

        def stop_serve() -> None:
            try:
                if self._started_ray:
                    serve.shutdown()
                else:
                    serve.delete(APP_NAME)
            except Exception as e:  # noqa: BLE001 - shutting down anyway
                logger.warning("stopping Ray Serve: %s", e)

        # Serve's shutdown retries forever if Ray's own processes are already gone (e.g. a Ctrl-C that reached
        # the whole process group): bounded here, then Ray itself is stopped regardless.
        stopper = threading.Thread(target=stop_serve, name="sgl-jupyter-serve-stop", daemon=True)
        stopper.start()
        stopper.join(SERVE_STOP_TIMEOUT_S)
        if stopper.is_alive():
            logger.warning("Ray Serve did not stop within %.0fs; stopping Ray", SERVE_STOP_TIMEOUT_S)
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def __enter__(self) -> "ClusterServer":
        return self if self._running else self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ClusterServer({self.url}, replicas={self.options.replicas}, policy={self.options.policy})"


def _warm_up(url: str, api_key: Optional[str]) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    res = httpx.post(url + "/generate", headers=headers, timeout=600,
                     json={"text": "The capital city of France is",
                           "sampling_params": {"max_new_tokens": 1, "temperature": 0}})
    res.raise_for_status()


def main(server_opts: dict, engine_kwargs: dict, prog: str) -> int:
    """``launch_server --dp-size N`` / ``sgl-jupyter serve --replicas N``: start, say ready, serve until
    Ctrl-C or SIGTERM, then stop everything we started."""
    from ..server.launch import _fail, setup_logging

    try:
        setup_logging(engine_kwargs["log_level"], server_opts["log_file"])
        require_ray()
    except StartupError as e:
        return _fail(prog, str(e))
    options = ClusterOptions(replicas=server_opts["dp_size"], policy=server_opts["router_policy"],
                             ray_address=server_opts["ray_address"], host=server_opts["host"],
                             port=server_opts["port"], api_key=server_opts["api_key"],
                             max_body_bytes=server_opts["max_body_bytes"],
                             served_model_name=engine_kwargs.get("served_model_name"),
                             log_level=engine_kwargs["log_level"])

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    cluster = ClusterServer(engine_kwargs, options)
    try:
        try:
            cluster.start()
            signal.signal(signal.SIGTERM, _terminate)  # again: ray.init installs its own (a stack dump)
            _warm_up(cluster.url, options.api_key)
        except (StartupError, OSError) as e:
            return _fail(prog, str(e))
        except RuntimeError as e:  # Ray Serve: a replica failed to start (its traceback is in the message)
            return _fail(prog, f"the engine replicas failed to start: {str(e)[-2000:]}")
        url = cluster.url
        name = engine_kwargs.get("served_model_name") or engine_kwargs.get("model_path") or "the embedded model"
        print(f"The server is fired up and ready to roll! sgl_jupyter is serving {name} at {url} with "
              f"{options.replicas} replicas on Ray Serve (router policy: {options.policy}; OpenAI API: {url}/v1, "
              f"SGLang API: {url}/generate, metrics: {url}/metrics)", flush=True)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        logger.info("stopping")
        return 0
    finally:
        cluster.stop()
