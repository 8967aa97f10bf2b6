"""Role markers produce exactly the prompt the model's HF chat template renders."""
from __future__ import annotations

import pytest

from sgl_jupyter.lang.chat_template import (HFChatTemplate, chat_template_for_tokenizer, get_chat_template,
                                            get_chat_template_by_model_path)

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Apple."},
     {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Pear."}],
    [{"role": "system", "content": "你是一个有用的助手。"}, {"role": "user", "content": "上海今天天气如何?"},
     {"role": "assistant", "content": "晴,26°C。"}],
]


@pytest.fixture(scope="module")
def hf_tokenizer(model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def _hf(tokenizer, messages, add_generation_prompt=False):
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def test_hf_template_reproduces_apply_chat_template(hf_tokenizer):
    template = chat_template_for_tokenizer(hf_tokenizer)
    assert isinstance(template, HFChatTemplate)
    assert template.default_system_prompt == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert template.stop_str == ("<|im_end|>",)
    for messages in CONVERSATIONS:
        assert template.get_prompt(messages) == _hf(hf_tokenizer, messages), messages


def test_assistant_prefix_is_the_generation_prompt(hf_tokenizer):
    template = chat_template_for_tokenizer(hf_tokenizer)
    for messages in CONVERSATIONS:
        turns = messages[:-1] if messages[-1]["role"] == "assistant" else messages
        prefix, _ = template.get_prefix_and_suffix("assistant", template_history(template, turns))
        assert template.get_prompt(turns) + prefix == _hf(hf_tokenizer, turns, add_generation_prompt=True)


def template_history(template, messages):
    if messages[0]["role"] != "system" and template.default_system_prompt:
        return [{"role": "system", "content": template.default_system_prompt}] + list(messages)
    return list(messages)


def test_registry_template_for_the_embedded_model_matches_hf(hf_tokenizer, model_path):
    """Over HTTP only `model_path` is known: its registry entry must build the same prompts."""
    template = get_chat_template_by_model_path(model_path)
    assert template.name == "smollm2"
    for messages in CONVERSATIONS:
        assert template.get_prompt(messages) == _hf(hf_tokenizer, messages), messages


@pytest.mark.parametrize("path, name", [
    ("/models/Qwen2-7B-Instruct", "qwen"),
    ("meta-llama/Meta-Llama-3-8B-Instruct", "llama-3-instruct"),
    ("HuggingFaceTB/SmolLM2-1.7B-Instruct", "smollm2"),
    ("mistralai/Mistral-7B-Instruct-v0.2", "llama-2-chat"),
    ("google/gemma-2-9b-it", "gemma-it"),
    ("/data/models/some-base-model", "default"),
])
def test_registry_matches_model_paths(path, name):
    assert get_chat_template_by_model_path(path).name == name


def test_unknown_template_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="chatml"):
        get_chat_template("no-such-template")
