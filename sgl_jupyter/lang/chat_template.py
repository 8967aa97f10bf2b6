"""Role markers: what `user(...)`, `assistant(...)` and `system(...)` put around their content.

Two sources:
* `HFChatTemplate`: the model's own template (`tokenizer.apply_chat_template`), rendered with a sentinel
  as content, so a program's text is exactly the prompt HF builds for the same messages. Used when the
  backend has the tokenizer (the in-process Engine).
* a registry of fixed templates keyed by model path (SGLang's scheme), used over HTTP where only the
  server's `model_path` is known.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

_SENTINEL = "SGLROLECONTENTSENTINEL"


@dataclass
class ChatTemplate:
    name: str
    default_system_prompt: Optional[str]
    role_prefix_and_suffix: dict[str, tuple[str, str]]
    stop_str: tuple[str, ...] = ()
    image_token: str = "<image>"

    def get_prefix_and_suffix(self, role: str, hist_messages: list[dict]) -> tuple[str, str]:
        """The text before and after a `role` message that follows `hist_messages`."""
        return self.role_prefix_and_suffix.get(role, ("", ""))

    def get_prompt(self, messages: list[dict]) -> str:
        """The prompt for a list of OpenAI-style messages (default system prompt included, as programs do)."""
        messages = list(messages)
        if messages and messages[0]["role"] != "system" and self.default_system_prompt:
            messages.insert(0, {"role": "system", "content": self.default_system_prompt})
        out = ""
        for i, m in enumerate(messages):
            prefix, suffix = self.get_prefix_and_suffix(m["role"], messages[:i])
            out += prefix + m["content"] + suffix
        return out


class HFChatTemplate(ChatTemplate):
    """The tokenizer's own Jinja template, asked for each role's prefix and suffix given the history.

    For templates that render each message independently of later ones (ChatML, Llama-3, Qwen, SmolLM...)
    the concatenated prefixes, contents and suffixes equal `apply_chat_template(messages)` exactly.
    Templates that reject a role or re-render history differently fall back to `fallback`.
    """

    def __init__(self, tokenizer: Any, fallback: ChatTemplate):
        self._tokenizer = tokenizer
        self._fallback = fallback
        self._lock = threading.Lock()
        sys_p, sys_s = self._probe("system", []) or fallback.get_prefix_and_suffix("system", [])
        user_p, user_s = self._probe("user", [{"role": "system", "content": "S"}]) or \
            fallback.get_prefix_and_suffix("user", [])
        asst_p, asst_s = self._probe("assistant", [{"role": "system", "content": "S"},
                                                   {"role": "user", "content": "U"}]) or \
            fallback.get_prefix_and_suffix("assistant", [])
        stop = asst_s.strip()
        super().__init__(
            name=f"hf:{getattr(tokenizer, 'name_or_path', '')}",
            default_system_prompt=self._default_system(sys_p, sys_s, user_p),
            role_prefix_and_suffix={"system": (sys_p, sys_s), "user": (user_p, user_s),
                                    "assistant": (asst_p, asst_s)},
            stop_str=(stop,) if stop else (),
        )

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        if not messages:
            return ""
        out = self._tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)
        if not isinstance(out, str):
            raise TypeError("apply_chat_template(tokenize=False) did not return a string")
        return out

    def _probe(self, role: str, history: list[dict]) -> Optional[tuple[str, str]]:
        try:
            before = self.render(history)
            full = self.render(history + [{"role": role, "content": _SENTINEL}])
        except Exception:  # the template rejects this role or this order
            return None
        if not full.startswith(before) or _SENTINEL not in full[len(before):]:
            return None
        at = full.index(_SENTINEL, len(before))
        return full[len(before):at], full[at + len(_SENTINEL):]

    def _default_system(self, sys_p: str, sys_s: str, user_p: str) -> Optional[str]:
        """The system prompt the template inserts when the first message is not a system message."""
        try:
            head = self.render([{"role": "user", "content": _SENTINEL}]).split(_SENTINEL)[0]
        except Exception:
            return None
        tail = sys_s + user_p
        if sys_p and head.startswith(sys_p) and head.endswith(tail) and len(head) > len(sys_p) + len(tail):
            return head[len(sys_p):len(head) - len(tail)]
        return None

    def get_prefix_and_suffix(self, role: str, hist_messages: list[dict]) -> tuple[str, str]:
        key = (role, tuple((m["role"], m["content"]) for m in hist_messages))
        return self._cached(key)

    @functools.lru_cache(maxsize=4096)
    def _cached(self, key: tuple) -> tuple[str, str]:
        role, hist = key
        with self._lock:  # tokenizers are not guaranteed thread-safe
            got = self._probe(role, [{"role": r, "content": c} for r, c in hist])
        if got is not None:
            return got
        static = self.role_prefix_and_suffix.get(role)
        return static if static is not None else self._fallback.get_prefix_and_suffix(role, [])

    __hash__ = object.__hash__
    __eq__ = object.__eq__


# ------------------------------------------------------------------------------------------ the registry
chat_template_registry: dict[str, ChatTemplate] = {}
matching_function_registry: list[Callable[[str], Optional[ChatTemplate]]] = []


def register_chat_template(template: ChatTemplate) -> None:
    chat_template_registry[template.name] = template


def register_chat_template_matching_function(func: Callable[[str], Optional[ChatTemplate]]):
    matching_function_registry.append(func)
    return func


def get_chat_template(name: str) -> ChatTemplate:
    try:
        return chat_template_registry[name]
    except KeyError:
        raise ValueError(f"unknown chat template {name!r}; known: {sorted(chat_template_registry)}") from None


def get_chat_template_by_model_path(model_path: str) -> ChatTemplate:
    for match in matching_function_registry:
        template = match(model_path or "")
        if template is not None:
            return template
    return get_chat_template("default")


def chat_template_for_tokenizer(tokenizer: Any, model_path: str = "") -> ChatTemplate:
    """The tokenizer's own template when it has one, else the registry's match for the model path."""
    fallback = get_chat_template_by_model_path(model_path or getattr(tokenizer, "name_or_path", ""))
    if getattr(tokenizer, "chat_template", None):
        return HFChatTemplate(tokenizer, fallback)
    return fallback


_CHATML = {
    "system": ("<|im_start|>system\n", "<|im_end|>\n"),
    "user": ("<|im_start|>user\n", "<|im_end|>\n"),
    "assistant": ("<|im_start|>assistant\n", "<|im_end|>\n"),
}

register_chat_template(ChatTemplate("default", None, {
    "system": ("SYSTEM:", "\n"), "user": ("USER:", "\n"), "assistant": ("ASSISTANT:", "\n")}))
register_chat_template(ChatTemplate("chatml", None, dict(_CHATML), stop_str=("<|im_end|>",)))
# SmolLM2-Instruct: ChatML whose template adds this system prompt when the chat does not start with one.
register_chat_template(ChatTemplate(
    "smollm2", "You are a helpful AI assistant named SmolLM, trained by Hugging Face", dict(_CHATML),
    stop_str=("<|im_end|>",)))
register_chat_template(ChatTemplate("qwen", "You are a helpful assistant.", dict(_CHATML),
                                    stop_str=("<|im_end|>",)))
register_chat_template(ChatTemplate("llama-3-instruct", None, {
    "system": ("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),
    "user": ("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
    "assistant": ("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>")},
    stop_str=("<|eot_id|>",)))
register_chat_template(ChatTemplate("llama-2-chat", None, {
    "system": ("<<SYS>>\n", "\n<</SYS>>\n\n"), "user": ("[INST] ", " [/INST]"), "assistant": ("", " </s><s>")}))
register_chat_template(ChatTemplate("gemma-it", None, {
    "system": ("", ""), "user": ("<start_of_turn>user\n", "<end_of_turn>\n"),
    "assistant": ("<start_of_turn>model\n", "<end_of_turn>\n")}))
register_chat_template(ChatTemplate("vicuna_v1.1", (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."), {
    "system": ("", " "), "user": ("USER:", " "), "assistant": ("ASSISTANT:", "</s>")}))


@register_chat_template_matching_function
def _match_smollm(model_path: str) -> Optional[ChatTemplate]:
    path = model_path.lower()
    if "smollm2" in path or ("smollm" in path and "instruct" in path):
        return get_chat_template("smollm2" if "smollm2" in path else "chatml")
    return None


@register_chat_template_matching_function
def _match_chatml(model_path: str) -> Optional[ChatTemplate]:
    path = model_path.lower()
    if "qwen" in path and ("instruct" in path or "chat" in path):
        return get_chat_template("qwen")
    if "tinyllama" in path:
        return get_chat_template("chatml")
    return None


@register_chat_template_matching_function
def _match_llama(model_path: str) -> Optional[ChatTemplate]:
    path = model_path.lower()
    if "llama-3" in path and "instruct" in path:
        return get_chat_template("llama-3-instruct")
    if ("llama-2" in path and "chat" in path) or (("mistral" in path or "mixtral" in path) and "instruct" in path):
        return get_chat_template("llama-2-chat")
    if "vicuna" in path:
        return get_chat_template("vicuna_v1.1")
    return None


@register_chat_template_matching_function
def _match_gemma(model_path: str) -> Optional[ChatTemplate]:
    path = model_path.lower()
    if "gemma" in path and "it" in path.replace("gemma", ""):
        return get_chat_template("gemma-it")
    return None
