"""Jupyter face of sgl_jupyter: ``%load_ext sgl_jupyter`` registers the magics (`magics.py`), the `SGL`
config (`config.py`), the engine panel comm (`panel_comm.py`), and binds the DSL names (`gen`, `select`,
`function`, roles, ...) in the user namespace where they are free, so ``%%sgl`` cells need no imports.

Loading is quick: torch and the widgets load on first use (``%sgl_load``, ``%%sgl``).
"""
from __future__ import annotations

from typing import Any, Optional

from .config import SGL
from .session import KernelSession

# DSL names a %%sgl cell (and the notebook) can use without importing them.
DSL_NAMES = ("function", "gen", "gen_int", "gen_string", "select", "system", "user", "assistant", "system_begin",
             "system_end", "user_begin", "user_end", "assistant_begin", "assistant_end", "set_default_backend",
             "Runtime", "RuntimeEndpoint")

_loaded: dict[int, dict] = {}  # id(shell) -> what load_ipython_extension registered


def get_session(shell: Any = None) -> Optional[KernelSession]:
    """The kernel session of `shell` (default: the running IPython), or None if the extension is not loaded."""
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
    entry = _loaded.get(id(shell))
    return entry["session"] if entry else None


def load_ipython_extension(ip: Any) -> None:
    """`%load_ext sgl_jupyter`."""
    if id(ip) in _loaded:
        return
    import sgl_jupyter.lang as lang

    from .magics import SglMagics
    from .panel_comm import PanelComm

    config = SGL(parent=ip)
    ip.configurables.append(config)
    session = KernelSession(config)
    ip.register_magics(SglMagics(ip, session))
    panel = PanelComm(session)
    try:
        panel.register()
    except Exception:  # noqa: BLE001 - no comm manager (a plain terminal): the panel is a JupyterLab feature
        panel = None
    if panel is not None and getattr(ip, "kernel", None) is not None:
        panel.open_from_kernel()  # the panel fills in now, not after the last queued cell
    ip.events.register("post_execute", session.refresh_displays)
    names = {n: getattr(lang, n) for n in DSL_NAMES if hasattr(lang, n) and n not in ip.user_ns}
    ip.push(names, interactive=False)
    _loaded[id(ip)] = {"session": session, "config": config, "panel": panel, "names": names}


def unload_ipython_extension(ip: Any) -> None:
    """`%unload_ext sgl_jupyter`: shut the engine down and remove the magics and names it added."""
    entry = _loaded.pop(id(ip), None)
    if entry is None:
        return
    entry["session"].close()
    try:
        ip.events.unregister("post_execute", entry["session"].refresh_displays)
    except ValueError:
        pass
    if entry["panel"] is not None:
        entry["panel"].unregister()
    if entry["config"] in ip.configurables:
        ip.configurables.remove(entry["config"])
    from .magics import SglMagics

    manager = ip.magics_manager
    for kind in ("line", "cell"):
        table = manager.magics[kind]
        for name in [n for n, fn in table.items() if isinstance(getattr(fn, "__self__", None), SglMagics)]:
            del table[name]
    manager.registry.pop("SglMagics", None)
    for name, value in entry["names"].items():
        if ip.user_ns.get(name) is value:
            del ip.user_ns[name]
            ip.user_ns_hidden.pop(name, None)


__all__ = ["SGL", "KernelSession", "get_session", "load_ipython_extension", "unload_ipython_extension"]
