"""Ctrl-C during a %%sgl cell: the requests are aborted, no KV slot leaks, the next cell works."""
from __future__ import annotations

import _thread
import os
import signal
import threading
import time

from tests.conftest import assert_no_leak
from tests.jupyter.conftest import run_ok, wait_until

LONG = 3000  # tokens: minutes on CPU, so the interrupt always lands mid-generation


def _interrupt_after(seconds: float, how) -> threading.Timer:
    timer = threading.Timer(seconds, how)
    timer.daemon = True
    timer.start()
    return timer


def _generating(engine) -> bool:
    return engine.get_server_info()["num_running_reqs"] > 0


def test_interrupt_main_aborts_a_long_generation(ip, session, kernel_engine):
    started = time.monotonic()
    # interrupt once tokens are flowing (the prefill is done and the request holds KV slots)
    watcher = threading.Thread(target=lambda: wait_until(lambda: _generating(kernel_engine), 30) and
                               _interrupt_after(1.0, _thread.interrupt_main), daemon=True)
    watcher.start()
    result = ip.run_cell(f'''%%sgl --temperature 0
s += "Write a very long story about a dragon:" + gen("story", max_tokens={LONG}, ignore_eos=True)
''')
    elapsed = time.monotonic() - started
    err = result.error_in_exec
    assert type(err).__name__ == "SglCellInterrupted", err
    assert isinstance(err, KeyboardInterrupt)
    assert "aborted" in str(err) and "ready" in str(err)
    assert elapsed < 60
    widget = session.last_stream
    assert widget.status == "interrupted"
    story = widget.streams["story"]
    assert 0 < story["n_tokens"] < LONG and story["finish_reason"] == "abort"
    assert_no_leak(kernel_engine)
    run_ok(ip, '%%sgl --temperature 0 --out next_cell\ns += "The capital of France is" + gen("city", max_tokens=3)')
    assert ip.user_ns["next_cell"].get_meta_info("city")["finish_reason"]["type"] in ("length", "stop")
    assert_no_leak(kernel_engine)


def test_sigint_while_the_body_waits_for_a_variable(ip, session, kernel_engine):
    # a real SIGINT (what Jupyter's interrupt button sends) while the body blocks reading `s["story"]`
    pid = os.getpid()
    watcher = threading.Thread(target=lambda: wait_until(lambda: _generating(kernel_engine), 30) and
                               _interrupt_after(1.0, lambda: os.kill(pid, signal.SIGINT)), daemon=True)
    watcher.start()
    result = ip.run_cell(f'''%%sgl --temperature 0
s += "Once upon a time" + gen("story", max_tokens={LONG}, ignore_eos=True)
first_part = s["story"]
s += "The end."
''')
    assert type(result.error_in_exec).__name__ == "SglCellInterrupted", result.error_in_exec
    assert_no_leak(kernel_engine)
    run_ok(ip, '%%sgl --out after_sigint\ns += "Hi" + gen("x", max_tokens=2)')
    assert_no_leak(kernel_engine)


def test_interrupt_aborts_every_fork(ip, session, kernel_engine):
    pid = os.getpid()  # forks.join() waits without a timeout: a real SIGINT, as Jupyter sends, wakes it
    watcher = threading.Thread(target=lambda: wait_until(lambda: _generating(kernel_engine), 30) and
                               _interrupt_after(1.0, lambda: os.kill(pid, signal.SIGINT)), daemon=True)
    watcher.start()
    result = ip.run_cell(f'''%%sgl --temperature 0
s += "Three stories:"
forks = s.fork(3)
forks += gen("story", max_tokens={LONG}, ignore_eos=True)
forks.join()
''')
    assert type(result.error_in_exec).__name__ == "SglCellInterrupted", result.error_in_exec
    assert_no_leak(kernel_engine)
    assert [session.last_stream.streams[k]["finish_reason"] for k in session.last_stream.order] == ["abort"] * 3
