"""`%load_ext sgl_jupyter`, the SGL config, magic help and argument errors, `%sgl_load`'s card, flush,
serve, and `%unload_ext` (which shuts the engine down)."""
from __future__ import annotations

import re
import socket

import pytest
from IPython.core.error import UsageError

from tests.jupyter.conftest import LOAD_LINE, ensure_loaded, ext_name, run_ok

SGL_LINE_MAGICS = {"sgl_load", "sgl_unload", "sgl_connect", "sgl_serve", "sgl_cache", "sgl_stats", "sgl_flush"}


def test_the_package_is_the_extension():
    import sgl_jupyter
    import sgl_jupyter.jupyter as jupyter

    # `%load_ext sgl_jupyter` needs these on the package (they delegate to sgl_jupyter.jupyter)
    assert callable(getattr(sgl_jupyter, "load_ipython_extension", None))
    assert callable(getattr(sgl_jupyter, "unload_ipython_extension", None))
    assert callable(jupyter.load_ipython_extension) and callable(jupyter.unload_ipython_extension)


def test_load_ext_registers_magics_config_and_dsl_names(ip):
    line = set(ip.magics_manager.magics["line"])
    assert SGL_LINE_MAGICS <= line
    assert "sgl" in ip.magics_manager.magics["cell"]
    assert any(type(c).__name__ == "SGL" for c in ip.configurables)
    for name in ("gen", "select", "function", "user", "assistant", "system"):
        assert callable(ip.user_ns[name]), name
        assert name in ip.user_ns_hidden  # %who does not list them


def test_config_sets_the_defaults(ip, session, capsys):
    ip.run_line_magic("config", "SGL.max_tokens = 256")
    ip.run_line_magic("config", "SGL.temperature = 0.5")
    assert session.config.max_tokens == 256 and session.config.temperature == 0.5
    ip.run_line_magic("config", "SGL")
    help_text = capsys.readouterr().out
    assert "SGL.max_tokens" in help_text and "widget_rate" in help_text


def test_magics_document_their_arguments(ip):
    assert "--api-key" in ip.find_line_magic("sgl_connect").__doc__
    assert "--stop" in ip.find_line_magic("sgl_serve").__doc__
    doc = ip.find_cell_magic("sgl").__doc__
    for flag in ("--out", "--no-stream", "--temperature", "--max-tokens", "--program"):
        assert flag in doc, flag
    assert "--max-total-tokens" in ip.find_line_magic("sgl_load").__doc__


def test_sgl_load_help_is_one_screen_and_help_all_lists_every_engine_flag(ip, capsys):
    ip.run_line_magic("sgl_load", "--help")
    short = capsys.readouterr().out
    assert len(short.strip().splitlines()) <= 25, short
    for flag in ("MODEL_PATH", "--max-total-tokens", "--mem-fraction-static", "--dtype", "--device",
                 "--disable-radix-cache", "--context-length", "--help-all"):
        assert flag in short, flag
    ip.run_line_magic("sgl_load", "--help-all")
    out = capsys.readouterr().out
    for flag in ("--max-total-tokens", "--mem-fraction-static", "--max-num-sequences", "--dtype", "--device",
                 "--disable-radix-cache", "--chunked-prefill-size", "--context-length", "--tp-size"):
        assert flag in out, flag


@pytest.mark.parametrize("line,fragment", [
    ("--dtype float8", "invalid choice"),
    ("--no-such-flag 1", "unrecognized arguments"),
    ("--max-total-tokens many", "invalid int value"),
    ("/no/such/model/dir", "'/no/such/model/dir' does not exist: give %sgl_load an HF model directory"),
])
def test_sgl_load_rejects_bad_input_and_keeps_the_engine(ip, session, line, fragment):
    engine = session.engine
    with pytest.raises(UsageError, match=re.escape(fragment)) as err:
        ip.run_line_magic("sgl_load", line)
    assert "--model-path" not in str(err.value)  # the path was positional
    assert session.engine is engine  # a typo does not cost the loaded model


def test_sgl_load_card_reports_the_engine(ip, session, capsys):
    info = session.engine.get_server_info()
    from sgl_jupyter.jupyter.cards import model_card

    card = model_card(info).as_dict()
    assert card["KV capacity"] == "8,192 tokens" == f"{info['max_total_num_tokens']:,} tokens"
    assert card["dtype"] == info["dtype"] and card["device"] == "cpu"
    assert card["parameters"].endswith(f"({info['num_params']:,})")
    assert "SmolLM2" in card["model"]


def test_magics_without_a_backend_say_what_to_do(shell):
    from sgl_jupyter.jupyter import get_session
    from sgl_jupyter.jupyter.session import KernelSession

    ensure_loaded(shell)
    empty = KernelSession()
    with pytest.raises(UsageError, match="%sgl_load"):
        empty.backend
    with pytest.raises(UsageError, match="%sgl_load"):
        empty.require_engine("%sgl_cache")
    assert get_session(shell).engine is not None


def test_sgl_flush_empties_the_radix_tree_and_its_live_view(ip, kernel_engine, capsys):
    from tests.jupyter.conftest import wait_until

    run_ok(ip, '%%sgl\ns += "Flush me please" + gen("x", max_tokens=2)')
    ip.run_line_magic("sgl_cache", "")
    view = ip.user_ns["_sgl_cache"]
    try:
        assert kernel_engine.cache_snapshot()["total_tokens"] > 0 and view.tree["total_tokens"] > 0
        ip.run_line_magic("sgl_flush", "")
        assert "cache flushed" in capsys.readouterr().out
        assert kernel_engine.cache_snapshot()["total_tokens"] == 0
        assert wait_until(lambda: view.tree["total_tokens"] == 0, 5)  # no engine event says so: the magic does
    finally:
        view.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sgl_serve_serves_the_kernels_engine(ip, session, capsys):
    pytest.importorskip("sgl_jupyter.server", reason="the server package is not built yet")
    from sgl_jupyter import server

    if not hasattr(server, "serve_in_thread"):
        pytest.skip("sgl_jupyter.server.serve_in_thread is not available yet")
    import httpx

    port = _free_port()
    ip.run_line_magic("sgl_serve", f"--port {port} --api-key sekret")
    try:
        url = session.server.url
        assert f"serving at {url}" in capsys.readouterr().out
        with pytest.raises(UsageError, match="already serving"):
            ip.run_line_magic("sgl_serve", f"--port {_free_port()}")
        headers = {"Authorization": "Bearer sekret"}
        res = httpx.post(f"{url}/generate", json={"text": "Hello", "sampling_params": {"max_new_tokens": 2}},
                         headers=headers, timeout=60)
        assert res.status_code == 200, res.text
        assert res.json()["meta_info"]["completion_tokens"] <= 2
        assert httpx.post(f"{url}/generate", json={"text": "x"}, timeout=60).status_code == 401
    finally:
        ip.run_line_magic("sgl_serve", "--stop")
    assert session.server is None


def test_unload_ext_removes_everything_and_load_brings_it_back(shell):
    from sgl_jupyter.jupyter import get_session

    session = ensure_loaded(shell)
    engine = session.engine
    shell.run_line_magic("unload_ext", ext_name())
    assert get_session(shell) is None
    assert not SGL_LINE_MAGICS & set(shell.magics_manager.magics["line"])
    assert "sgl" not in shell.magics_manager.magics["cell"]
    assert "gen" not in shell.user_ns
    assert not any(type(c).__name__ == "SGL" for c in shell.configurables)
    with pytest.raises(Exception, match="shut down"):
        engine.generate("x", {"max_new_tokens": 1})
    shell.run_line_magic("load_ext", ext_name())
    result = shell.run_cell(f"%sgl_load {LOAD_LINE}")
    result.raise_error()
    run_ok(shell, '%%sgl\ns += "back" + gen("x", max_tokens=1)')


def test_sgl_connect_to_nothing_is_a_clear_error_and_keeps_the_engine(ip, session):
    engine = session.engine
    with pytest.raises(UsageError, match="127.0.0.1:9"):
        ip.run_line_magic("sgl_connect", "http://127.0.0.1:9")
    with pytest.raises(UsageError, match="URL"):
        ip.run_line_magic("sgl_connect", "localhost:30000")
    assert session.engine is engine and session.kind == "engine"


def test_sgl_serve_on_a_busy_port_is_a_clear_error(ip, session):
    pytest.importorskip("sgl_jupyter.server")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UsageError, match=str(port)):
            ip.run_line_magic("sgl_serve", f"--port {port}")
    assert session.server is None
