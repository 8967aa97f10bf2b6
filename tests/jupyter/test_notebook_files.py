"""The shipped notebooks are saved as JupyterLab saves them for this project's kernel, so opening one does not
mark it modified (JupyterLab rewrites `kernelspec` and `language_info` from the kernel when they differ), and
they carry no outputs."""
from __future__ import annotations

import json

import pytest
from ipykernel.ipkernel import IPythonKernel

from sgl_jupyter.main import ORDER, notebook_paths


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebook_is_saved_as_jupyterlab_would_save_it(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert (nb["nbformat"], nb["nbformat_minor"]) == (4, 5)
    assert nb["metadata"]["kernelspec"] == {"display_name": "Python 3 (ipykernel)", "language": "python",
                                            "name": "python3"}
    info, kernel = nb["metadata"]["language_info"], dict(IPythonKernel.language_info)
    assert {k: v for k, v in info.items() if k != "version"} == {k: v for k, v in kernel.items() if k != "version"}
    assert info["version"].count(".") == 2  # the project's Python (README: on another one, JupyterLab updates it)
    ids = [c.get("id") for c in nb["cells"]]
    assert all(ids) and len(set(ids)) == len(ids)  # nbformat 4.5 cell ids: JupyterLab would add missing ones
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"]


def test_every_notebook_of_the_reading_order_is_there():
    assert [p.stem for p in notebook_paths()][:len(ORDER)] == list(ORDER)
