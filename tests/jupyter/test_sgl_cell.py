r"""`%%sgl` cells in a real IPython shell on the embedded model: the seed article's programs (sections 4.1
and 4.3), what the TokenStream shows against the engine's own numbers, cell semantics and error display."""
from __future__ import annotations

import json
import re

import pytest

from tests.jupyter.conftest import run_ok

SEED_REGEX = r'{"name": "[^"]+", "age": \d+}'


def test_seed_structured_output_cell(ip, session, event_log):
    # seed 4.1 as a %%sgl body: the regex constrains the answer to the JSON shape. Greedy: sampled, the 135M
    # model may wander inside the loose `[^"]+` / `\d+` until max_tokens (the quickstart shows a tighter pattern)
    run_ok(ip, r'''%%sgl --seed 0
json_schema = r'{"name": "[^"]+", "age": \d+}'
s += user("请根据以下信息生成用户资料:张三,28岁") + assistant(gen("info", regex=json_schema, temperature=0))
''')
    state = ip.user_ns["_sgl"]
    answer = state["info"]
    assert re.fullmatch(SEED_REGEX, answer), answer
    assert isinstance(json.loads(answer)["age"], int)
    assert state.text().endswith(answer + "<|im_end|>\n")
    assert ip.user_ns["json_schema"] == SEED_REGEX  # the body ran at module level: its names stay defined

    widget = session.last_stream
    assert widget.status == "done" and widget.order == ["info"]
    stream = widget.streams["info"]
    meta = state.get_meta_info("info")
    finished = [e for e in event_log.of("FinishEvent") if e.rid == meta["id"]]
    assert len(finished) == 1
    assert stream["text"] == answer == finished[0].text
    assert stream["n_tokens"] == meta["completion_tokens"] == finished[0].meta_info["completion_tokens"]
    assert "".join(t["t"] for t in stream["tokens"]) == answer
    assert stream["finish_reason"] == meta["finish_reason"]["type"] == "stop"
    assert stream["done"] is True
    assert stream["tokens_per_s"] == pytest.approx(meta["completion_tokens"] / meta["e2e_latency"], rel=1e-3)


def test_seed_weather_agent_cell(ip, session, event_log):
    # seed 4.3's program body pasted into a cell (its `return s` included); the question is the start text
    run_ok(ip, '''%%sgl --seed 0
s += "上海今天天气如何?"
# Step 1: 识别意图
intent = s + "请判断用户意图,只回答【查天气】或【其他】:" + gen(max_tokens=10)

# Step 2: 若是查天气,调用模拟 API(实际可替换为 requests)
if "查天气" in intent:
    weather_data = "晴,26°C,东南风3级"
    s += f"\\n天气API返回:{weather_data}"

# Step 3: 生成最终回复
s += "\\n请用自然语言总结以上信息:" + gen(max_tokens=64)
return s
''')
    state = ip.user_ns["_sgl"]
    text = state.text()
    head = "上海今天天气如何?请判断用户意图,只回答【查天气】或【其他】:"
    assert text.startswith(head)
    assert text.index("\n天气API返回:晴,26°C,东南风3级\n请用自然语言总结以上信息:") >= len(head)
    assert "\ufffd" not in text

    widget = session.last_stream
    assert widget.order == ["gen", "gen#2"]  # two unnamed gens, in program order
    first, second = (widget.streams[k] for k in widget.order)
    api = text.index("\n天气API返回")
    assert text[len(head):api] == first["text"]
    assert text.endswith("请用自然语言总结以上信息:" + second["text"])
    # each stream's token count and text are the engine's, request by request
    finished = {e.text: e.meta_info for e in event_log.of("FinishEvent")}
    for stream in (first, second):
        assert stream["n_tokens"] == finished[stream["text"]]["completion_tokens"]
        assert "".join(t["t"] for t in stream["tokens"]) == stream["text"]
        assert 1 <= stream["n_tokens"] <= (10 if stream is first else 64)


def test_seed_code_pasted_verbatim_with_sglang_imports(ip, session):
    # `from sglang import ...` inside a %%sgl cell means this package's DSL
    run_ok(ip, '''%%sgl --seed 0
from sglang import function, gen, select

@function
def weather_agent(s):
    intent = s + "请判断用户意图,只回答【查天气】或【其他】:" + gen(max_tokens=10)
    if "查天气" in intent:
        weather_data = "晴,26°C,东南风3级"
        s += f"\\n天气API返回:{weather_data}"
    s += "\\n请用自然语言总结以上信息:" + gen(max_tokens=16)
    return s

result = weather_agent.run(s="上海今天天气如何?", seed=0)
print(result.text)
''')
    result = ip.user_ns["result"]
    assert result.text().startswith("上海今天天气如何?请判断用户意图")
    # the nested program streamed into the cell's widget too
    assert session.last_stream.order == ["gen", "gen#2"]


def test_cell_with_only_definitions_just_defines(ip, session):
    before = ip.user_ns.get("_sgl")
    previous_stream = session.last_stream
    result = run_ok(ip, '''%%sgl
@function
def qa(s, question):
    s += "Q: " + question + "\\nA:" + gen("answer", max_tokens=4, temperature=0)
''')
    assert result.result is None
    assert type(ip.user_ns["qa"]).__name__ == "SglFunction"
    assert ip.user_ns.get("_sgl") is before
    assert session.last_stream is previous_stream  # nothing ran, nothing streamed
    state = ip.user_ns["qa"].run(question="1+1=?")
    assert state.get_meta_info("answer")["completion_tokens"] <= 4


def test_program_flag_defines_a_reusable_program(ip):
    run_ok(ip, '''%%sgl --program greet --max-tokens 3 --temperature 0 --out first
s += "Hello, my name is" + gen("name")
''')
    program = ip.user_ns["greet"]
    assert type(program).__name__ == "SglFunction"
    first = ip.user_ns["first"]
    again = program.run(max_new_tokens=3, temperature=0)
    assert again["name"] == first["name"]  # greedy: the same program gives the same text
    assert first.get_meta_info("name")["completion_tokens"] <= 3


def test_config_max_tokens_is_the_default_of_every_gen(ip):
    ip.run_line_magic("config", "SGL.max_tokens = 5")
    run_ok(ip, '''%%sgl --out capped
s += "Count: one two" + gen("more", ignore_eos=True)
''')
    assert ip.user_ns["capped"].get_meta_info("more")["completion_tokens"] == 5
    run_ok(ip, '''%%sgl --out wider --max-tokens 7
s += "Count: one two" + gen("more", ignore_eos=True)
''')
    assert ip.user_ns["wider"].get_meta_info("more")["completion_tokens"] == 7


def test_no_stream_runs_without_a_widget(ip, session, capsys):
    previous_stream = session.last_stream
    run_ok(ip, '''%%sgl --no-stream --temperature 0 --out plain
s += "The capital of France is" + gen("city", max_tokens=4)
''')
    state = ip.user_ns["plain"]
    assert state.get_meta_info("city")["completion_tokens"] <= 4
    assert session.last_stream is previous_stream
    assert state.text() in capsys.readouterr().out  # the final text is displayed


def test_logprobs_flag_gives_tokens_the_engines_logprobs(ip, session):
    run_ok(ip, '''%%sgl --logprobs --temperature 0 --out scored
s += "One, two, three," + gen("next", max_tokens=6, ignore_eos=True)
''')
    meta = ip.user_ns["scored"].get_meta_info("next")
    stream = session.last_stream.streams["next"]
    assert session.last_stream.show_logprobs is True
    engine_lps = [entry[0] for entry in meta["output_token_logprobs"]]
    shown = [t["lp"] for t in stream["tokens"] if t["lp"] is not None]
    assert len(engine_lps) == 6 and shown
    assert shown == pytest.approx(engine_lps[:len(shown)])


def test_program_error_shows_the_failing_cell_line(ip):
    result = ip.run_cell('''%%sgl
s += "Hello"
s += " world" + gen("x", regex="[")
''')
    err = result.error_in_exec
    assert type(err).__name__ == "SglCellError"
    rendered = "\n".join(err._render_traceback_())
    assert "line 3 of the %%sgl cell" in rendered  # line 1 is the %%sgl line
    assert '---->   3   s += " world" + gen("x", regex="[")' in rendered
    assert "not a valid regular expression" in rendered
    assert "Traceback" not in rendered and "sgl_jupyter/" not in rendered
    run_ok(ip, '%%sgl --out after\ns += "ok" + gen("y", max_tokens=1)')  # the next cell works


def test_engine_error_in_a_step_points_at_its_line(ip):
    result = ip.run_cell('''%%sgl
s += "a"
s += gen("x", max_tokens=2)
s += gen("y", max_tokens=2, json_schema='{"type": "nosuchtype"}')
s += gen("z", max_tokens=2)
''')
    err = result.error_in_exec
    assert type(err).__name__ == "SglCellError", err
    assert err.line + err.line_offset == 4
    assert "Traceback" not in "\n".join(err._render_traceback_())


def test_python_error_in_the_body_points_at_its_line(ip, session):
    result = ip.run_cell('''%%sgl
s += "a" + gen("x", max_tokens=1)
value = undefined_name + 1
''')
    err = result.error_in_exec
    assert isinstance(err.error, NameError)
    assert err.line + err.line_offset == 3
    assert session.last_stream.status == "error"
    assert "NameError" in session.last_stream.error


def test_syntax_error_is_reported_with_its_line(ip):
    result = ip.run_cell('%%sgl\ns += "a"\ns += (\n')
    err = result.error_in_exec
    assert isinstance(err.error, SyntaxError)
    shown = "\n".join(err._render_traceback_())
    assert "at line 3 of the %%sgl cell" in shown
    assert re.findall(r"line (\d+)", shown) == ["3"], shown  # one line number: the cell's, not the body's too


def test_bad_cell_arguments_are_usage_errors(ip, capsys):
    for line in ("%%sgl --max-tokens -1", "%%sgl --out s", "%%sgl --program 1abc", "%%sgl --nonsense"):
        result = ip.run_cell(line + "\ns += 'x'")
        assert type(result.error_in_exec).__name__ == "UsageError", line
