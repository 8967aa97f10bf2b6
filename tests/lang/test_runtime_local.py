"""`Runtime(model_path=...)` loads an engine in this process; `set_default_backend` takes an Engine."""
from __future__ import annotations

import pytest

import sgl_jupyter.lang as sgl


def test_runtime_from_model_path_runs_programs_and_shuts_down(model_path):
    from sgl_jupyter.engine.errors import EngineDeadError

    rt = sgl.Runtime(model_path=model_path, device="cpu", max_total_tokens=2048)
    assert rt.engine is not None and rt.get_tokenizer() is rt.engine.tokenizer

    def greeting():
        return sgl.user("Say hi.") + sgl.assistant(sgl.gen("reply", max_tokens=4))

    state = rt.run(greeting, temperature=0)
    assert state.messages()[-1]["content"] == state["reply"].lstrip()
    assert rt.get_server_info()["model_path"] == model_path
    assert rt.flush_cache() is True
    rt.shutdown()
    with pytest.raises(EngineDeadError):
        rt.run(greeting, temperature=0)


def test_set_default_backend_wraps_an_engine_once(engine):
    previous = sgl.get_default_backend()
    try:
        first = sgl.set_default_backend(engine)
        assert isinstance(first, sgl.EngineBackend) and first.engine is engine
        assert sgl.set_default_backend(engine) is first
        assert sgl.get_server_info()["model_path"] == engine.args.model_path
    finally:
        sgl.set_default_backend(previous)


def test_plain_function_with_arguments_runs_as_steps(engine):
    rt = sgl.Runtime(engine=engine)

    def ask(question):
        return sgl.user(question) + sgl.assistant(sgl.gen("answer", max_tokens=4))

    state = rt.run(ask, question="What is 1+1?", temperature=0)
    assert state.messages()[1] == {"role": "user", "content": "What is 1+1?"}
    assert state.text.endswith(state["answer"] + "<|im_end|>\n")  # `.text` without a call (the seed's style)

    def returns_nothing():
        sgl.gen("x")

    with pytest.raises(TypeError, match="returned None"):
        rt.run(returns_nothing)
