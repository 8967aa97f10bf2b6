"""The multi-turn bench (the seed's table) on CPU: radix on (the shared engine) vs off."""
from __future__ import annotations

import pandas as pd
import pytest

from sgl_jupyter.bench import multiturn as mt
from sgl_jupyter.bench.workload import chat_workload


def test_each_turn_extends_the_previous_prompt_and_answer_exactly(tokenizer):
    history = mt.ChatHistory(tokenizer, "You are terse.")
    first = list(history.ask("Hello?"))
    answer = tokenizer.encode("Hi there.", add_special_tokens=False)
    second = history.ask("And then?", answer)
    assert second[:len(first) + len(answer)] == first + answer
    assert tokenizer.decode(second).endswith(
        tokenizer.apply_chat_template([{"role": "user", "content": "And then?"}], tokenize=False,
                                      add_generation_prompt=True).split("<|im_start|>user")[-1])


def test_workload_shares_the_system_prompt_and_nothing_else(tokenizer):
    w = chat_workload(tokenizer, num_users=3, num_turns=2, system_tokens=64, user_tokens=16)
    assert len(tokenizer.encode(w.system)) >= 64
    firsts = [turns[0] for turns in w.turns]
    assert len(set(firsts)) == 3 and all(len(tokenizer.encode(q)) >= 16 for q in firsts)


@pytest.fixture(scope="module")
def measured(engine):
    cfg = mt.MultiturnConfig(num_users=3, num_turns=5, system_tokens=384, user_tokens=24, answer_tokens=16)
    return mt.run(cfg, engine=engine, progress=False)


def test_radix_cuts_turn5_ttft_to_a_third_and_hits_three_quarters(measured):
    table = mt.summary(measured)
    assert table.attrs["turn"] == 5
    assert table.attrs["ttft_ratio"] <= 0.35, table
    assert table.attrs["hit_rate"] >= 0.75, table
    assert table.loc[mt.OFF, "cache hit rate"] == 0  # the off engine reuses nothing


def test_every_request_is_measured_once_and_the_history_grows(measured):
    assert len(measured) == 2 * 3 * 5
    assert not measured.ttft_s.isna().any() and (measured.ttft_s <= measured.e2e_s).all()
    assert (measured.completion_tokens == 16).all()
    for _, chat in measured.groupby(["radix", "user"]):
        assert chat.prompt_tokens.is_monotonic_increasing
    same = measured.pivot_table(index=["user", "turn"], columns="radix", values="prompt_tokens")
    assert (same[mt.OFF] == same[mt.ON]).all()  # both runs send the same prompts


def test_plot_draws_ttft_and_hit_rate_by_turn(measured):
    import matplotlib

    matplotlib.use("Agg")
    fig = mt.plot(measured)
    assert [ax.get_title() for ax in fig.axes] == ["Time to first token by turn", "Radix cache hit rate by turn"]
    assert isinstance(mt.by_turn(measured), pd.DataFrame)
