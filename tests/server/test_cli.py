"""The real command line in a subprocess: argument errors name the flag; the seed's start-up failures
(missing config.json, port in use, out of memory) say what to do; a full start on --host 0.0.0.0 logs
uvicorn's start-up lines, says "ready" with the URL, serves the seed's curl, and stops on Ctrl-C."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from sgl_jupyter.server.args import DEFAULT_HOST, build_parser

from .conftest import free_port

ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUTF8": "1"}


def launch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sgl_jupyter.launch_server", *args], capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def lan_address() -> str | None:
    """A non-loopback address of this machine (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        addr = s.getsockname()[0]
    return None if addr.startswith("127.") else addr


@pytest.fixture
def cli(capsys):
    """``main(argv)`` in this process (the same code path as the command, without paying the interpreter
    start-up each time); returns (exit status, stdout, stderr). Logging changes are undone after."""
    from sgl_jupyter.server.launch import main

    pkg = logging.getLogger("sgl_jupyter")
    saved = (list(pkg.handlers), pkg.level, pkg.propagate)

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            rc = main(list(argv))
        except SystemExit as e:
            rc = e.code
        out, err = capsys.readouterr()
        return rc, out, err

    yield run
    pkg.handlers, pkg.level, pkg.propagate = saved[0], saved[1], saved[2]


def test_unknown_flag_is_an_error_of_the_real_command():
    res = launch("--bogus-flag", "--port", "1")
    assert res.returncode == 2
    assert "error: unrecognized arguments: --bogus-flag" in res.stderr


@pytest.mark.parametrize("args, flag", [
    (["--port", "abc"], "--port"),
    (["--port", "70000"], "--port"),
    (["--mem-fraction-static", "1.5"], "--mem-fraction-static"),
    (["--max-num-sequences", "0"], "--max-running-requests"),
    (["--dtype", "int3"], "--dtype"),
    (["--quantization", "int3"], "--quantization"),
    (["--log-level", "loud"], "--log-level"),
    (["--attention-backend", "flashinfer", "--disable-flashinfer"], "--disable-flashinfer"),
])
def test_bad_values_are_argparse_errors_naming_the_flag(cli, args, flag):
    rc, _, err = cli(*args)
    assert rc == 2, err
    last = err.strip().splitlines()[-1]
    assert "error:" in last and flag in last, last


def test_sgl_jupyter_serve_is_launch_server(capsys):
    from sgl_jupyter.cli import main

    res = subprocess.run([sys.executable, "-m", "sgl_jupyter.cli", "serve", "--bogus"], capture_output=True,
                         text=True, timeout=60, env=ENV)
    assert res.returncode == 2 and "sgl-jupyter serve: error" in res.stderr and "--bogus" in res.stderr
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "--max-num-sequences" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["nonsense"])
    assert exc.value.code == 2 and "unknown command" in capsys.readouterr().err


def test_parser_has_sglangs_flags_and_loopback_default():
    parser = build_parser()
    ns = parser.parse_args(["--max-num-sequences", "16", "--disable-flashinfer", "--tp-size", "1"])
    assert ns.max_running_requests == 16 and ns.disable_flashinfer
    assert DEFAULT_HOST == "127.0.0.1" and ns.host == "127.0.0.1" and ns.port == 30000
    help_text = parser.format_help()
    for flag in ("--model-path", "--host", "--port", "--log-level", "--log-file", "--mem-fraction-static",
                 "--max-running-requests", "--max-num-sequences", "--max-total-tokens", "--chunked-prefill-size",
                 "--attention-backend", "--disable-flashinfer", "--disable-radix-cache", "--dtype", "--api-key",
                 "--served-model-name", "--tp-size", "--quantization"):
        assert flag in help_text, flag


def test_missing_config_json_says_what_to_do(tmp_path, cli):
    empty = tmp_path / "Qwen2-7B-Instruct"
    empty.mkdir()
    res = launch("--model-path", str(empty), "--port", str(free_port()))
    assert res.returncode == 1
    assert "config.json" in res.stderr and str(empty) in res.stderr and "--model-path" in res.stderr
    assert "ls -l" in res.stderr
    (empty / "pytorch_model.bin").write_bytes(b"")
    rc, _, err = cli("--model-path", str(empty), "--port", "0")
    assert rc == 1 and "pytorch_model.bin" in err  # what it found is listed
    rc, _, err = cli("--model-path", str(tmp_path / "nope"), "--port", "0")
    assert rc == 1 and "does not exist" in err


def test_port_in_use_names_the_port_and_is_checked_before_the_model(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # An empty model dir would fail too: the port error proves the port is checked first.
        res = launch("--model-path", str(tmp_path), "--port", str(port))
    assert res.returncode == 1
    assert "Address already in use" in res.stderr and str(port) in res.stderr
    assert f"lsof -i :{port}" in res.stderr and "--port" in res.stderr
    assert "config.json" not in res.stderr


def test_unwritable_log_file_is_reported(cli, tmp_path):
    rc, _, err = cli("--log-file", str(tmp_path / "no" / "such" / "dir" / "x.log"), "--port", "0")
    assert rc == 1 and "--log-file" in err


def test_out_of_memory_names_the_flag_to_lower(cli):
    rc, _, err = cli("--max-total-tokens", str(10 ** 11), "--device", "cpu", "--port", "0")
    assert rc == 1
    assert "out of memory" in err.lower() and "--max-total-tokens" in err


def test_fp8_on_cpu_says_it_needs_an_fp8_gpu(cli):
    rc, _, err = cli("--quantization", "fp8", "--device", "cpu", "--port", "0")
    assert rc == 1 and "quantization='fp8'" in err and "NVIDIA GPU with FP8" in err


def test_sgl_load_takes_the_same_quantization_flag():
    from IPython.core.error import UsageError

    from sgl_jupyter.jupyter.engine_flags import parse_engine_flags

    _, kwargs, _ = parse_engine_flags(["--quantization", "fp8", "--device", "cuda"])
    assert kwargs["quantization"] == "fp8"
    with pytest.raises(UsageError, match="--quantization"):
        parse_engine_flags(["--quantization", "int3"])


def _wait_for_line(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        if needle in line:
            return line
    proc.kill()
    raise AssertionError(f"no {needle!r} line; output:\n{''.join(lines)}\n{proc.stderr.read()}")


def test_full_start_on_all_interfaces_with_api_key(tmp_path):
    lan = lan_address()
    port = free_port()
    log_file = tmp_path / "sglang.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sgl_jupyter.launch_server", "--host", "0.0.0.0", "--port", str(port),
         "--log-level", "warning", "--api-key", "sk-cli", "--log-file", str(log_file), "--served-model-name",
         "SmolLM2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        ready = _wait_for_line(proc, "ready", timeout=300)
        assert f"http://127.0.0.1:{port}" in ready
        host = lan or "127.0.0.1"
        body = json.dumps({"model": "SmolLM2", "prompt": "你好,请用一句话介绍你自己。", "max_tokens": 8},
                          ensure_ascii=False)
        base = ["curl", "-sS", "-X", "POST", f"http://{host}:{port}/v1/completions", "-H",
                "Content-Type: application/json", "-d", body]
        out = subprocess.run(base + ["-H", "Authorization: Bearer sk-cli"], capture_output=True, timeout=60)
        res = json.loads(out.stdout.decode("utf-8"))
        assert res["object"] == "text_completion" and res["usage"]["completion_tokens"] >= 1
        code = subprocess.run(base + ["-o", "/dev/null", "-w", "%{http_code}"], capture_output=True, timeout=60)
        assert code.stdout.decode() == "401"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    stderr = proc.stderr.read()
    assert rc == 0, stderr
    assert "Application startup complete." in stderr
    assert f"Uvicorn running on http://0.0.0.0:{port}" in stderr
    assert "Application startup complete." in log_file.read_text(encoding="utf-8")
    if lan is None:
        pytest.skip("no non-loopback address on this machine: 0.0.0.0 was checked through 127.0.0.1 only")
