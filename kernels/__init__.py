"""The engine's kernels, imported as ``sgl_jupyter.kernels`` (setup.py maps this folder there).

Run from the repository root (``python -c``, ``python -m sgl_jupyter.launch_server``, a notebook kernel started
there), the root is on ``sys.path`` and this folder is also importable as top-level ``kernels``: the name of
Hugging Face's kernel hub package, which transformers imports when it is installed. Imported under that name,
this module steps aside: it loads the real ``kernels`` from the rest of ``sys.path`` in its place, or, where none
is installed, stays an empty module without a version, which transformers reads as "not installed"."""
from __future__ import annotations


def _step_aside() -> None:
    import importlib.machinery
    import importlib.util
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    search = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec(__name__, search)
    if spec is None or spec.origin == __file__:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[__name__] = module  # the import statement returns what sys.modules holds once this module ran
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(__name__, None)
        raise


if __name__ == "kernels":
    _step_aside()
