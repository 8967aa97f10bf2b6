"""SGLang programs (in the spirit of sglang/test/test_programs.py) on the in-process engine.

The embedded model is small (135M), so assertions check structure, constraints, the prompt the program
built and determinism at temperature 0 rather than world knowledge.
"""
from __future__ import annotations

import asyncio
import json
import re

import pytest

import sgl_jupyter.lang as sgl

pytestmark = pytest.mark.usefixtures("sgl_backend")


def chat_prompt(tokenizer, messages, add_generation_prompt=False):
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


# ---------------------------------------------------------------------------------------------- 1
def test_few_shot_qa_is_deterministic_and_stops_at_newline():
    @sgl.function
    def few_shot_qa(s, question):
        s += "The following are questions with answers.\n\n"
        s += "Q: What is the capital of France?\nA: Paris\n"
        s += "Q: What is the capital of Germany?\nA: Berlin\n"
        s += "Q: What is the capital of Italy?\nA: Rome\n"
        s += "Q: " + question + "\n"
        s += "A:" + sgl.gen("answer", stop="\n", temperature=0, max_tokens=8)

    first = few_shot_qa.run(question="What is the capital of Spain?")
    second = few_shot_qa.run(question="What is the capital of Spain?")
    assert first["answer"] == second["answer"]
    assert "\n" not in first["answer"] and first["answer"].strip()
    assert first.text().endswith("Q: What is the capital of Spain?\nA:" + first["answer"])
    meta = first.get_meta_info("answer")
    assert meta["finish_reason"]["type"] in ("stop", "length")
    # The second run shares the whole prompt with the first through the radix cache.
    assert second.get_meta_info("answer")["cached_tokens"] >= meta["prompt_tokens"] - 1


# ---------------------------------------------------------------------------------------------- 2
def test_multi_turn_chat_builds_the_hf_template_prompt(tokenizer):
    @sgl.function
    def multi_turn(s, question_1, question_2):
        s += sgl.system("You are a helpful assistant.")
        s += sgl.user(question_1)
        s += sgl.assistant(sgl.gen("answer_1", max_tokens=8))
        with s.user():
            s += question_2
        with s.assistant():
            s += sgl.gen("answer_2", max_tokens=8)

    state = multi_turn.run(question_1="Name a fruit.", question_2="Name another one.", temperature=0)
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == state["answer_1"].lstrip()
    # Exactly what HF's chat template renders for the same conversation.
    assert state.text() == chat_prompt(tokenizer, messages)
    again = multi_turn.run(question_1="Name a fruit.", question_2="Name another one.", temperature=0)
    assert again.text() == state.text()


def test_default_system_prompt_is_inserted_like_the_template(tokenizer):
    @sgl.function
    def one_turn(s):
        s += sgl.user("Hi!")
        s += sgl.assistant_begin()
        s += sgl.gen("reply", max_tokens=4, temperature=0)
        s += sgl.assistant_end()

    state = one_turn.run()
    assert state.messages()[0] == {"role": "system",
                                   "content": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"}
    prompt = chat_prompt(tokenizer, [{"role": "user", "content": "Hi!"}], add_generation_prompt=True)
    assert state.text().startswith(prompt + state["reply"])


# ---------------------------------------------------------------------------------------------- 3
def test_select_true_or_false():
    @sgl.function
    def true_or_false(s, statement):
        s += "Determine whether the statement below is True, False, or Unknown.\n"
        s += "Statement: The capital of France is Pairs.\n"
        s += "Answer: True\n"
        s += "Statement: " + statement + "\n"
        s += "Answer:" + sgl.select("answer", ["True", "False", "Unknown"])

    state = true_or_false.run(statement="The capital of Germany is Berlin.")
    assert state["answer"] in ["True", "False", "Unknown"]
    assert state.text().endswith("Answer:" + state["answer"])
    meta = state.get_meta_info("answer")
    scores = meta["normalized_prompt_logprobs"]
    assert len(scores) == 3 and scores.index(max(scores)) == ["True", "False", "Unknown"].index(state["answer"])
    assert true_or_false.run(statement="The capital of Germany is Berlin.")["answer"] == state["answer"]


# ---------------------------------------------------------------------------------------------- 4
def test_decode_int():
    @sgl.function
    def decode_int(s):
        s += "The number of hours in a day is " + sgl.gen_int("hours", max_tokens=4) + "\n"
        s += "The number of days in a week is " + sgl.gen_int("days", max_tokens=4) + "\n"

    state = decode_int.run(temperature=0)
    assert re.fullmatch(r"[-+]?\d+", state["hours"]), state.text()
    assert re.fullmatch(r"[-+]?\d+", state["days"]), state.text()
    assert state.text() == (f"The number of hours in a day is {state['hours']}\n"
                            f"The number of days in a week is {state['days']}\n")


# ---------------------------------------------------------------------------------------------- 5
def test_decode_json_with_regex_fields():
    @sgl.function
    def decode_json(s):
        s += "Generate a JSON object to describe the basic city information of Paris.\n"
        s += "Here is the JSON object:\n"
        with s.var_scope("json_output"):
            s += "{\n"
            s += '  "name": ' + sgl.gen(regex=sgl.REGEX_STR, max_tokens=8) + ",\n"
            s += '  "population": ' + sgl.gen(regex=sgl.REGEX_INT, stop=[" ", "\n"], max_tokens=8) + ",\n"
            s += '  "latitude": ' + sgl.gen(regex=sgl.REGEX_FLOAT, stop=[" ", "\n"], max_tokens=8) + "\n"
            s += "}"

    state = decode_json.run(temperature=0)
    obj = json.loads(state["json_output"])
    assert isinstance(obj["name"], str)
    assert isinstance(obj["population"], int)
    assert isinstance(obj["latitude"], (int, float))
    assert state.text().endswith(state["json_output"])


def test_decode_json_with_json_schema():
    import jsonschema

    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}

    @sgl.function
    def person(s):
        s += sgl.user("Describe a person as JSON with a name and an age.")
        s += sgl.assistant(sgl.gen("json", json_schema=schema, max_tokens=40, temperature=0))

    state = person.run()
    obj = json.loads(state["json"])
    jsonschema.validate(obj, schema)


# ---------------------------------------------------------------------------------------------- 6
def test_dtype_gen_and_regex_ip_address():
    ip = r"((25[0-5]|2[0-4]\d|[01]?\d\d?)\.){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)"

    @sgl.function
    def typed(s):
        s += "Q: Which year was DNS invented?\nA: " + sgl.gen("int_res", dtype=int, max_tokens=6) + "\n"
        s += "Q: What is the value of pi?\nA: " + sgl.gen("float_res", dtype=float, max_tokens=8) + "\n"
        s += "Q: Is the sky blue?\nA: " + sgl.gen("bool_res", dtype=bool, max_tokens=4) + "\n"
        s += "Q: What is the IP address of the Google DNS servers?\nA: " + sgl.gen("ip", regex=ip, max_tokens=16)

    state = typed.run(temperature=0)
    int(state["int_res"])
    float(state["float_res"])
    assert state["bool_res"] in ("True", "False")
    assert re.fullmatch(ip, state["ip"]), state["ip"]


# ---------------------------------------------------------------------------------------------- 7
def test_expert_answer_reads_a_variable_mid_program():
    @sgl.function
    def expert_answer(s, question):
        s += "Question: " + question + "\n"
        s += "A good person to answer this question is" + sgl.gen("expert", stop=[".", "\n"], max_tokens=8) + ".\n"
        s += "For example," + s["expert"] + " would answer that " + sgl.gen("answer", stop=".", max_tokens=8) + "."

    state = expert_answer.run(question="What is the capital of France?", temperature=0)
    assert "." not in state["expert"] and "\n" not in state["expert"]
    assert f"For example,{state['expert']} would answer that {state['answer']}." in state.text()


# ---------------------------------------------------------------------------------------------- 8
def test_tool_use_calls_python_between_generations():
    calls = []

    def calculate(expression):
        calls.append(expression)
        try:
            return str(eval(expression, {"__builtins__": {}}))
        except Exception:
            return "error"

    @sgl.function
    def tool_use(s, lhs, rhs):
        s += "Please perform computations using a calculator. You can use calculate(expression) to get the results.\n"
        s += "For example,\ncalculate(1+2)=3\ncalculate(3*4)=12\n"
        s += "Question: What is the product of " + str(lhs) + " and " + str(rhs) + "?\n"
        s += "Answer: The answer is calculate(" + sgl.gen("expression", stop=")", max_tokens=12) + ") = "
        with s.var_scope("answer"):
            s += calculate(s["expression"])

    state = tool_use.run(lhs=257, rhs=983, temperature=0)
    assert calls == [state["expression"]]
    assert state["answer"] == calculate(state["expression"])
    assert state.text().endswith(f"calculate({state['expression']}) = {state['answer']}")


# ---------------------------------------------------------------------------------------------- 9
def test_react_loop_branches_on_select():
    @sgl.function
    def react(s, question):
        s += ("Question: Which country does the founder of Microsoft live in?\n"
              "Thought 1: I need to search for the founder of Microsoft.\n"
              "Action 1: Search [Founder of Microsoft].\n"
              "Observation 1: The founder of Microsoft is Bill Gates.\n"
              "Thought 2: The answer is the United States.\n"
              "Action 2: Finish [United States].\n\n")
        s += "Question: " + question + "\n"
        for i in range(1, 3):
            s += f"Thought {i}:" + sgl.gen(f"thought_{i}", stop=[".", "\n"], max_tokens=10) + ".\n"
            s += f"Action {i}: " + sgl.select(f"action_{i}", ["Search", "Finish"])
            if s[f"action_{i}"] == "Search":
                s += " [" + sgl.gen(stop="]", max_tokens=8) + "].\n"
                s += f"Observation {i}:" + sgl.gen(stop=[".", "\n"], max_tokens=10) + ".\n"
            else:
                s += " [" + sgl.gen("answer", stop="]", max_tokens=8) + "].\n"
                break
        return i

    state = react.run(question="What country does the creator of Linux live in?", temperature=0)
    steps = state.ret_value
    for i in range(1, steps + 1):
        assert state[f"action_{i}"] in ("Search", "Finish")
        assert f"Action {i}: {state[f'action_{i}']} [" in state.text()
    if state[f"action_{steps}"] == "Finish":
        assert "]" not in state["answer"]


# ---------------------------------------------------------------------------------------------- 10
def test_fork_parallel_decoding_shares_the_prefix():
    fork_size = 3

    @sgl.function
    def parallel_decoding(s, topic):
        s += "Act as a helpful assistant.\n"
        s += "USER: Give some tips for " + topic + ".\n"
        s += "ASSISTANT: Okay. Here are " + str(fork_size) + " concise tips, each under 8 words:\n"
        for i in range(1, 1 + fork_size):
            s += f"{i}." + sgl.gen(f"tip_{i}", max_tokens=8, stop=[".", "\n"]) + ".\n"
        forks = s.fork(fork_size)
        for i in range(fork_size):
            forks[i] += f"Now, I expand tip {i + 1} into a detailed paragraph:\nTip {i + 1}:"
            forks[i] += sgl.gen("detailed_tip", max_tokens=8, stop=["\n\n"])
        forks.join()
        s += "Here are these tips with detailed explanation:\n"
        for i in range(fork_size):
            s += f"Tip {i + 1}:" + forks[i]["detailed_tip"] + "\n"
        s += "\nIn summary," + sgl.gen("summary", max_tokens=8)

    state = parallel_decoding.run(topic="writing a good blog post", temperature=0)
    tips = state["detailed_tip"]  # join(gather_variable) gives the parent a list, one per fork
    assert isinstance(tips, list) and len(tips) == fork_size
    for i, tip in enumerate(tips):
        assert f"Tip {i + 1}:{tip}\n" in state.text()
    assert isinstance(state["summary"], str)


def test_forks_hit_the_prefix_cache(engine):
    @sgl.function
    def forked(s):
        s += "Here is a long shared context about gardening. " * 8
        forks = s.fork(3)
        forks += lambda i: f"Tip {i}:" + sgl.gen("tip", max_tokens=4)
        forks.join()
        return forks

    forks = forked.run(temperature=0).ret_value
    for f in forks:
        meta = f.get_meta_info("tip")
        assert meta["cached_tokens"] >= meta["prompt_tokens"] - 5, meta


# ---------------------------------------------------------------------------------------------- 11
def test_parallel_encoding_concatenates_forks_in_order():
    @sgl.function
    def parallel_encoding(s, question, context_0, context_1, context_2):
        s += "USER: I will ask a question based on some statements.\n"
        s += "ASSISTANT: Sure. I will give the answer.\n"
        s += "USER: Please memorize these statements.\n"
        contexts = [context_0, context_1, context_2]
        forks = s.fork(len(contexts))
        forks += lambda i: f"Statement {i}: " + contexts[i] + "\n"
        forks.join(mode="concate_and_append")
        s += "Now, please answer the following question. Do not list options."
        s += "\nQuestion: " + question + "\n"
        s += "ASSISTANT:" + sgl.gen("answer", max_tokens=8)

    state = parallel_encoding.run(question="Who is the father of Julian?", context_0="Ethan is the father of Liam.",
                                  context_1="Noah is the father of Julian.",
                                  context_2="Oliver is the father of Carlos.", temperature=0)
    text = state.text()
    assert ("Please memorize these statements.\nStatement 0: Ethan is the father of Liam.\n"
            "Statement 1: Noah is the father of Julian.\nStatement 2: Oliver is the father of Carlos.\n"
            "Now, please answer") in text
    assert text.endswith("ASSISTANT:" + state["answer"])


# ---------------------------------------------------------------------------------------------- 12
def test_stream_text_iter_matches_the_non_streaming_run():
    @sgl.function
    def qa(s, question):
        s += sgl.system("You are a helpful assistant.")
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer", max_tokens=12))

    expected = qa.run(question="请用一句话介绍长城。", temperature=0)
    state = qa.run(question="请用一句话介绍长城。", temperature=0, stream=True)
    chunks = list(state.text_iter())
    assert len(chunks) > 2  # text arrived in pieces
    assert "".join(chunks) == state.text() == expected.text()
    state = qa.run(question="请用一句话介绍长城。", temperature=0, stream=True)
    assert "".join(state.text_iter("answer")) == expected["answer"]
    assert "\ufffd" not in expected["answer"]


def test_stream_async_iter():
    @sgl.function
    def hello(s):
        s += "Count to five: 1, 2," + sgl.gen("rest", max_tokens=8)

    async def collect(state):
        return [c async for c in state.text_async_iter("rest")]

    state = hello.run(temperature=0, stream=True)
    assert "".join(asyncio.run(collect(state))) == hello.run(temperature=0)["rest"]


# ---------------------------------------------------------------------------------------------- 13
def test_run_batch_preserves_order_and_shares_the_prefix():
    @sgl.function
    def capital(s, country):
        s += "You answer with one word. " * 6 + "\n"  # a shared prefix longer than 64 characters
        s += "Q: What is the capital of France?\nA: Paris\n"
        s += "Q: What is the capital of " + country + "?\nA:" + sgl.gen("answer", stop="\n", max_tokens=6)

    countries = ["Japan", "Italy", "Egypt", "Canada"]
    states = capital.run_batch([{"country": c} for c in countries], temperature=0, progress_bar=True)
    assert [s.text().split("Q: What is the capital of ")[-1].split("?")[0] for s in states] == countries
    for state in states:
        meta = state.get_meta_info("answer")
        assert meta["cached_tokens"] > 20, meta  # the traced prefix was prefilled once for the batch
    single = capital.run(country="Italy", temperature=0)
    assert single["answer"] == states[1]["answer"]
    # Positional tuples work too (SGLang maps them onto the argument names).
    assert capital.run_batch([("Egypt",)], temperature=0)[0]["answer"] == states[2]["answer"]


# ---------------------------------------------------------------------------------------------- 14
def test_min_tokens_forces_a_longer_answer(engine):
    try:
        engine.generate("Hi", {"max_new_tokens": 3, "min_new_tokens": 3, "temperature": 0})
    except Exception as e:  # reported to the engine owner; this test runs for real once it is fixed
        pytest.xfail(f"the engine fails on min_new_tokens: {e}")

    @sgl.function
    def short_answer(s, min_tokens):
        s += sgl.user("Say OK.")
        s += sgl.assistant(sgl.gen("answer", max_tokens=16, min_tokens=min_tokens))

    free = short_answer.run(min_tokens=0, temperature=0)
    forced = short_answer.run(min_tokens=12, temperature=0)
    assert forced.get_meta_info("answer")["completion_tokens"] >= 12
    assert free.get_meta_info("answer")["completion_tokens"] <= forced.get_meta_info("answer")["completion_tokens"]


# ---------------------------------------------------------------------------------------------- 15
def test_stop_strings_cut_the_generation():
    @sgl.function
    def listing(s):
        s += "Fruits: apple, banana, cherry, grape, lemon, mango, orange, peach, pear, plum\nFruits: apple,"
        s += sgl.gen("until_comma", stop=",", max_tokens=8)
        s += "\nNumbers: 1 2 3 4 5 6 7 8 9 10 11 12\nNumbers: 1 2" + sgl.gen("until_seven", stop=["7", "x"],
                                                                           max_tokens=16)

    state = listing.run(temperature=0)
    assert "," not in state["until_comma"]
    assert "7" not in state["until_seven"]
    meta = state.get_meta_info("until_seven")
    assert meta["finish_reason"]["type"] == "stop" and meta["finish_reason"]["matched"] == "7"


# ---------------------------------------------------------------------------------------------- 16
def test_logprobs_and_meta_info_of_a_gen():
    @sgl.function
    def scored(s):
        s += "The capital of France is" + sgl.gen("x", max_tokens=3, return_logprob=True, top_logprobs_num=2)

    state = scored.run(temperature=0)
    meta = state.get_meta_info("x")
    assert meta["completion_tokens"] == len(meta["output_token_logprobs"]) == 3
    assert all(len(top) == 2 for top in meta["output_top_logprobs"])
    # greedy: each chosen token is the most likely one
    assert all(entry[1] == top[0][1] for entry, top in zip(meta["output_token_logprobs"], meta["output_top_logprobs"]))


# ---------------------------------------------------------------------------------------------- 17
def test_bind_trace_and_return_value():
    @sgl.function
    def greet(s, greeting, name):
        s += greeting + ", " + name + "! " + sgl.gen("rest", max_tokens=4)
        return s["rest"].upper()

    hello = greet.bind(greeting="Hello")
    tracer = hello.trace()
    assert tracer.constant_prefix() == "Hello, "
    assert [type(n).__name__ for n in tracer.flatten_nodes()][-2:] == ["SglConstantText", "SglGen"]
    assert isinstance(tracer.stopped_by, AttributeError)  # .upper() of a value that does not exist yet
    state = hello.run(name="Ada", temperature=0)
    assert state.text().startswith("Hello, Ada! ")
    assert state.ret_value == state["rest"].upper()
    with pytest.raises(TypeError, match="no argument"):
        greet.bind(nope=1)


def test_set_var_copy_and_state_plus_expression():
    @sgl.function
    def program(s):
        s.set_var("note", "kept")
        with s.copy() as c:
            c += "branch only" + sgl.gen("b", max_tokens=2)
        after = s + "Main line: " + sgl.gen("m", max_tokens=2)
        assert after is s
        assert "Main line" in after  # `in` on a state looks in its text
        assert "m" in after          # ...and at its variable names (SGLang)

    state = program.run(temperature=0)
    assert state["note"] == "kept"
    assert state["b"] == [state["b"][0]] and "branch only" not in state.text()
    assert state.text().startswith("Main line: ")


# ---------------------------------------------------------------------------------------------- listeners
@pytest.mark.parametrize("stream", [False, True])
def test_program_listener_sees_every_generation(stream):
    events = []

    @sgl.function
    def program(s):
        s += "Colors: red, green," + sgl.gen("more", max_tokens=6)
        forks = s.fork(2)
        forks += lambda i: f" Fork {i}:" + sgl.gen("branch", max_tokens=3)
        forks.join()
        s += " Pick:" + sgl.select("pick", ["blue", "yellow"])

    with sgl.program_listener(events.append):
        state = program.run(temperature=0, stream=stream)
        if stream:
            list(state.text_iter())
    state.sync()
    by_name = {}
    for e in events:
        by_name.setdefault(e["name"], []).append(e)
    more = by_name["more"]
    assert [e["event"] for e in more][0] == "gen_start" and more[-1]["event"] == "gen_end"
    assert "".join(e["delta"] for e in more if e["event"] == "gen_chunk") == state["more"] == more[-1]["text"]
    assert more[-1]["meta_info"]["completion_tokens"] == 6
    branch_ends = [e for e in by_name["branch"] if e["event"] == "gen_end"]
    assert sorted(e["text"] for e in branch_ends) == sorted(state["branch"])  # forks report too
    assert len({e["sid"] for e in branch_ends}) == 2
    assert by_name["pick"][0]["event"] == "select" and by_name["pick"][0]["text"] == state["pick"]


def test_a_finished_state_can_be_continued():
    @sgl.function
    def first_turn(s):
        s += sgl.user("Name a color.")
        s += sgl.assistant(sgl.gen("color", max_tokens=4))

    state = first_turn.run(temperature=0)
    state += sgl.user("And a fruit?")
    state += sgl.assistant(sgl.gen("fruit", max_tokens=4, temperature=0))
    assert isinstance(state["fruit"], str)
    assert [m["role"] for m in state.messages()] == ["system", "user", "assistant", "user", "assistant"]
