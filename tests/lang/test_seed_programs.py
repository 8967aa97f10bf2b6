r"""The seed article's two programs, verbatim apart from the imports and the line that picks the runtime
(here the in-process engine; tests/lang/test_runtime_endpoint.py runs them against a real server).

The seed samples at SGLang's default temperature 1.0 with 128 new tokens. The 135M model then sometimes
rambles inside the regex's `[^"]+` or `\d+` until the token limit, leaving the JSON unclosed (seeds 11 and
13 of 0..39 do); a fixed sampling seed keeps these tests reproducible.
"""
from __future__ import annotations

import json
import re

import pytest

from sgl_jupyter.lang import Runtime, assistant, function, gen, user

SEED_REGEX = r'{"name": "[^"]+", "age": \d+}'
# The seed's programs sample at temperature 1.0. On the 135M embedded model the JSON-regex program loops
# inside `[^"]+` until max_new_tokens for some seeds (seeds 0 and 5 of 0..7; ~15% over 100 seeds, measured in
# tests/engine/test_constrained_engine.py, where every sample is still checked against the mask). These tests
# are about the programs running unchanged, so they pin a seed whose samples finish (and whose weather answer
# samples no byte-level token pair that is invalid UTF-8, which decodes to U+FFFD in HF too: seed 2 does).
SEED_PROGRAM_SEED = 1


@pytest.fixture(scope="module")
def rt(engine):
    return Runtime(engine=engine, sampling_defaults={"seed": SEED_PROGRAM_SEED})


def test_seed_structured_output_program(rt, capsys):
    # ---- from the seed (section 4.1), unchanged except `rt` above ----
    json_schema = r'{"name": "[^"]+", "age": \d+}'

    def get_user_info():
        return (
            user("请根据以下信息生成用户资料:张三,28岁")
            + assistant(gen(regex=json_schema))
        )

    state = rt.run(get_user_info)
    print(state.text)
    # ---- checks ----
    printed = capsys.readouterr().out
    assert printed == state.text() + "\n"
    answer = state.messages()[-1]["content"]
    assert re.fullmatch(SEED_REGEX, answer), answer
    obj = json.loads(answer)
    assert isinstance(obj["name"], str) and isinstance(obj["age"], int)
    assert state.text().endswith(answer + "<|im_end|>\n")


def test_seed_weather_agent(rt, capsys):
    # ---- from the seed (section 4.3), unchanged except `rt` above ----
    @function
    def weather_agent(s):
        # Step 1: 识别意图
        intent = s + "请判断用户意图,只回答【查天气】或【其他】:" + gen(max_tokens=10)

        # Step 2: 若是查天气,调用模拟 API(实际可替换为 requests)
        if "查天气" in intent:
            weather_data = "晴,26°C,东南风3级"
            s += f"\n天气API返回:{weather_data}"

        # Step 3: 生成最终回复
        s += "\n请用自然语言总结以上信息:" + gen(max_tokens=64)
        return s

    result = rt.run(weather_agent, s="上海今天天气如何?")
    print(result.text)
    # ---- checks ----
    text = result.text()
    assert capsys.readouterr().out == text + "\n"
    head = "上海今天天气如何?请判断用户意图,只回答【查天气】或【其他】:"
    assert text.startswith(head)
    # `intent` is the state itself (SGLang's `s + ...` returns the state), and its text holds the question's
    # "【查天气】", so the branch is taken: the API line follows the first generation.
    assert text.index("\n天气API返回:晴,26°C,东南风3级\n请用自然语言总结以上信息:") >= len(head)
    assert result.ret_value is result
    assert "\ufffd" not in text
