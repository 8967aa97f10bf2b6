"""Mistakes get clear exceptions that say what to do, and a failing step names its program line."""
from __future__ import annotations

import socket
import time

import pytest

import sgl_jupyter.lang as sgl


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------- no program
def test_gen_outside_a_program_has_no_value():
    step = sgl.gen("answer", max_tokens=4)
    with pytest.raises(TypeError, match="inside a program"):
        f"{step}"
    with pytest.raises(TypeError, match="inside a program"):
        "x" in step  # noqa: B015
    with pytest.raises(TypeError, match="inside a program"):
        if step:
            pass
    with pytest.raises(TypeError, match="inside a program"):
        step == "x"  # noqa: B015
    with pytest.raises(TypeError, match="str"):
        "a" + sgl.gen() + 5


def test_running_without_a_backend_says_how_to_set_one():
    previous = sgl.get_default_backend()
    sgl.set_default_backend(None)
    try:
        @sgl.function
        def program(s):
            s += "Hi" + sgl.gen("x", max_tokens=2)

        with pytest.raises(RuntimeError, match="set_default_backend"):
            program.run()
    finally:
        sgl.set_default_backend(previous)


def test_function_needs_a_state_parameter():
    with pytest.raises(TypeError, match="first parameter is the program state"):
        sgl.function(lambda: None)


# ---------------------------------------------------------------------------------------------- backends
def test_unknown_backend_url_names_the_url():
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ConnectionError, match=f"{url}/get_model_info"):
        sgl.RuntimeEndpoint(url)
    with pytest.raises(ConnectionError, match="launch_server"):
        sgl.Runtime(endpoint=url)


def test_backend_url_must_be_a_url():
    with pytest.raises(ValueError, match="http://localhost:30000"):
        sgl.RuntimeEndpoint("localhost:30000")
    with pytest.raises(ValueError, match="model_path"):
        sgl.Runtime(endpoint="/models/qwen")
    with pytest.raises(TypeError, match="not a backend"):
        sgl.set_default_backend(42)


# ---------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("choices, error, message", [
    (None, ValueError, "needs choices"),
    ("True False", TypeError, "list of strings, got str"),
    ([], ValueError, "at least one choice"),
    (["yes", 1], TypeError, "item 1 is int"),
    (["yes", ""], ValueError, "item 1 is an empty string"),
    ({"a": 1}, TypeError, "list of strings"),
])
def test_bad_choices(choices, error, message):
    with pytest.raises(error, match=message):
        sgl.select("answer", choices)


def test_bad_choices_through_gen_and_bad_method():
    with pytest.raises(TypeError, match="list of strings"):
        sgl.gen("answer", choices="yes")
    with pytest.raises(TypeError, match="choices_method"):
        sgl.select("answer", ["a", "b"], choices_method="greedy")


@pytest.mark.parametrize("kwargs, message", [
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 2, "min_tokens": 5}, "larger than max_tokens"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"regex": "(unclosed"}, "not a valid regular expression"),
    ({"dtype": list}, "dtype"),
    ({"json_schema": "{not json"}, "not valid JSON"),
])
def test_bad_gen_arguments(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        sgl.gen("x", **kwargs)


# ---------------------------------------------------------------------------------------------- at run time
@pytest.mark.usefixtures("sgl_backend")
def test_a_failing_step_is_raised_with_its_program_line():
    @sgl.function
    def program(s):
        s += "Hello" + sgl.gen("ok", max_tokens=2)
        s += " world" + sgl.gen("bad", max_tokens=2, return_logprob=True, logprob_start_len=10_000)
        s += " never reached" + sgl.gen("later", max_tokens=2)

    with pytest.raises(ValueError, match="logprob_start_len") as info:
        program.run(temperature=0)
    assert "logprob_start_len=10_000" in info.value.sgl_line
    assert "test_errors.py" in info.value.sgl_line
    assert any("SGLang program step" in note for note in getattr(info.value, "__notes__", []))


@pytest.mark.usefixtures("sgl_backend")
def test_parameters_the_engine_cannot_honour_are_refused():
    @sgl.function
    def program(s):
        s += "Hi" + sgl.gen("x", max_tokens=4, stop_regex=r"\d")

    with pytest.raises(ValueError, match="stop_regex"):
        program.run()


@pytest.mark.usefixtures("sgl_backend")
def test_reading_an_unknown_variable_lists_the_known_ones():
    @sgl.function
    def program(s):
        s += "Hi" + sgl.gen("greeting", max_tokens=2)
        return s["greting"]

    with pytest.raises(KeyError, match="greeting"):
        program.run(temperature=0)


@pytest.mark.usefixtures("sgl_backend")
def test_program_errors_stop_the_program():
    @sgl.function
    def nested(s):
        with s.user():
            s += sgl.assistant("inside a user turn")

    with pytest.raises(ValueError, match="nested roles") as info:
        nested.run()
    assert "inside a user turn" in info.value.sgl_line

    @sgl.function
    def appends_a_number(s):
        s += 42

    with pytest.raises(TypeError, match=r"str\(\.\.\.\)"):
        appends_a_number.run()

    @sgl.function
    def sampled_select(s):
        s += "Pick:" + sgl.select("x", ["a", "b"], temperature=0.7)

    with pytest.raises(ValueError, match="temperature must be 0"):
        sampled_select.run()


@pytest.mark.usefixtures("sgl_backend")
def test_run_batch_raises_the_failure_and_keeps_every_state():
    @sgl.function
    def program(s, n):
        s += "Count:" + sgl.gen("x", max_tokens=n)

    with pytest.raises(ValueError, match="max_tokens") as info:
        program.run_batch([{"n": 2}, {"n": -3}, {"n": 2}], temperature=0)
    states = info.value.states
    assert len(states) == 3 and states[0]["x"] == states[2]["x"]
    assert any("run_batch item 1" in note for note in info.value.__notes__)


@pytest.mark.usefixtures("sgl_backend")
def test_abort_stops_a_streaming_program_without_leaking(engine):
    from tests.conftest import assert_no_leak

    @sgl.function
    def long(s):
        s += "Count from one to a thousand: one, two," + sgl.gen("count", max_tokens=400, ignore_eos=True)
        s += "after" + sgl.gen("after", max_tokens=400)

    state = long.run(temperature=0, stream=True)
    with pytest.raises(sgl.ProgramAborted):
        for i, _ in enumerate(state.text_iter("count")):
            if i == 3:
                state.abort()
    deadline = time.time() + 10
    while not state.stream_executor.is_finished and time.time() < deadline:
        time.sleep(0.05)
    assert isinstance(state.error(), sgl.ProgramAborted)
    assert state.get_meta_info("count")["completion_tokens"] < 400
    assert "after" not in state.text()
    assert_no_leak(engine)


@pytest.mark.usefixtures("sgl_backend")
def test_ctrl_c_during_a_run_aborts_its_requests(engine):
    import _thread
    import threading

    from tests.conftest import assert_no_leak

    @sgl.function
    def long(s):
        s += "Count from one to a thousand: one, two," + sgl.gen("count", max_tokens=400, ignore_eos=True)

    timer = threading.Timer(1.5, _thread.interrupt_main)
    timer.start()
    started = time.time()
    with pytest.raises(KeyboardInterrupt):
        long.run(temperature=0)
    assert time.time() - started < 10
    assert_no_leak(engine)
    # the engine is still usable
    assert engine.generate("Hi", {"max_new_tokens": 2, "temperature": 0})["meta_info"]["completion_tokens"] == 2


@pytest.mark.usefixtures("sgl_backend")
def test_ctrl_c_during_run_batch_aborts_every_program(engine):
    import _thread
    import threading

    from tests.conftest import assert_no_leak

    @sgl.function
    def long(s, i):
        s += f"Program {i}: count from one to a thousand: one, two," + sgl.gen("count", max_tokens=300,
                                                                                ignore_eos=True)

    timer = threading.Timer(1.5, _thread.interrupt_main)
    timer.start()
    started = time.time()
    with pytest.raises(KeyboardInterrupt):
        long.run_batch([{"i": i} for i in range(4)], temperature=0)
    assert time.time() - started < 10
    assert_no_leak(engine)
