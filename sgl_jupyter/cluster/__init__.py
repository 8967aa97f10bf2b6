"""Data parallelism beyond one engine: N engine replicas on Ray Serve behind a cache-aware router that
speaks the single server's API (``launch_server --dp-size N``, ``sgl-jupyter serve --replicas N``).
Needs the optional extra: ``pip install sgl-jupyter[cluster]``. See docs/cluster.md."""
from .policies import POLICIES, CacheAware, LeastLoad, PrefixTree, RoundRobin, make_policy

__all__ = ["POLICIES", "CacheAware", "LeastLoad", "PrefixTree", "RoundRobin", "make_policy", "ClusterOptions",
           "ClusterServer"]


def __getattr__(name: str):
    if name in ("ClusterOptions", "ClusterServer"):  # lazily: importing the package never needs Ray
        from . import launch

        return getattr(launch, name)
    raise AttributeError(name)
