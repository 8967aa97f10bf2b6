"""``%sgl_load``'s work: build an `Engine` with a progress bar over its phases, then warm it up.

The engine loads in one call, so the bar advances by phase (import, locate, load + allocate, warm-up);
the phase that takes long shows its name and the elapsed time while it runs.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional


def _phase(bar: Any, name: str, fn: Callable[[], Any]) -> Any:
    """Run `fn` on this thread while a ticker refreshes the bar's elapsed time."""
    bar.set_description(name)
    done = threading.Event()

    def tick() -> None:
        while not done.wait(0.5):
            bar.refresh()

    ticker = threading.Thread(target=tick, name="sgl-load-progress", daemon=True)
    ticker.start()
    try:
        return fn()
    finally:
        done.set()
        ticker.join()
        bar.update(1)


def load_engine(model_path: Optional[str], engine_kwargs: dict, *, warmup: bool = True, progress: bool = True) -> Any:
    """An `Engine` for `model_path` (None: the embedded model) built from EngineArgs keyword arguments."""
    from tqdm.auto import tqdm

    bar = tqdm(total=4 if warmup else 3, desc="sgl_load", disable=not progress,
               bar_format="{desc}: {n}/{total} {bar} [{elapsed}]")
    try:
        engine_mod = _phase(bar, "importing the engine", lambda: __import__("sgl_jupyter.engine", fromlist=["Engine"]))
        if model_path is None:
            model_path = _phase(bar, "preparing the embedded model", engine_mod.default_model_path)
        else:
            _phase(bar, f"checking {model_path}", lambda: None)
        engine = _phase(bar, "loading weights, allocating the KV cache",
                        lambda: engine_mod.Engine(model_path, **engine_kwargs))
        if warmup:
            def warm() -> None:
                engine.generate("Hello", {"max_new_tokens": 1, "temperature": 0})
                engine.flush_cache()  # start the radix tree (and its widget) empty

            _phase(bar, "warming up", warm)
        bar.set_description("ready")
        return engine
    finally:
        bar.close()
