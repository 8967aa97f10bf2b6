"""The router from a real IPython shell: ``%sgl_connect URL`` and ``%%sgl`` cells work as with one server;
``%sgl_serve --replicas`` fails fast and clearly on a taken port (before Ray starts)."""
from __future__ import annotations

import socket

import pytest

pytestmark = pytest.mark.cluster


@pytest.fixture
def shell():
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    import sgl_jupyter
    from sgl_jupyter.jupyter import get_session

    ext = "sgl_jupyter" if hasattr(sgl_jupyter, "load_ipython_extension") else "sgl_jupyter.jupyter"
    ip = start_ipython() or get_ipython()  # the process's one test shell (None once it exists)
    loaded_here = get_session(ip) is None
    if loaded_here:
        ip.run_line_magic("load_ext", ext)
    previous = get_session(ip).kind
    yield ip
    if get_session(ip).kind == "endpoint" and previous != "endpoint":
        ip.run_line_magic("sgl_unload", "")  # the Jupyter tests load their own engine afterwards
    if loaded_here:
        ip.run_line_magic("unload_ext", ext)


def test_sgl_connect_and_a_cell_through_the_router(shell, cluster):
    from sgl_jupyter.jupyter import get_session

    if get_session(shell).engine is not None:
        pytest.skip("this shell has an engine loaded; connecting would replace it for the other tests")
    shell.run_line_magic("sgl_connect", cluster.url)
    session = get_session(shell)
    assert session.kind == "endpoint"
    info = session.poll_server_info()
    assert [r["index"] for r in info["replicas"]] == [0, 1]  # what the engine panel reads: per-replica load
    result = shell.run_cell('''%%sgl --no-widget --seed 0 --out routed
s += "The capital of France is" + gen("city", max_tokens=4, temperature=0)
''')
    assert result.success, result.error_in_exec
    assert shell.user_ns["routed"]["city"]


def test_sgl_serve_replicas_on_a_busy_port_is_a_clear_error(shell):
    pytest.importorskip("ray")
    from IPython.core.error import UsageError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UsageError, match=f"port {port}.*--port"):
            shell.run_line_magic("sgl_serve", f"--replicas 2 --port {port}")
