"""Incremental detokenization that never emits half a UTF-8 character, and stop strings that
may span token boundaries (held back until they can no longer start a stop string)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

REPLACEMENT = "\ufffd"
# Decoding starts a few prompt tokens back so tokenizers that drop a leading space at sequence start
# (sentencepiece) still produce the right first characters.
SURROUNDING_PROMPT_TOKENS = 5


@dataclass
class DecodeState:
    """Per-request state. ``text`` is everything decoded; ``sent`` is how much of it was emitted."""

    prompt_tail: list[int]
    stop: list[str]
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    text: str = ""
    sent: int = 0
    prefix_offset: int = 0
    read_offset: int = 0
    matched_stop: Optional[str] = None
    _search_from: int = 0
    _ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ids = list(self.prompt_tail)
        self.prefix_offset = 0
        self.read_offset = len(self._ids)


def raw_decoder(tokenizer):
    """The Rust tokenizer under a fast HF tokenizer, when its ``decode`` gives what ``tokenizer.decode``
    gives (no clean-up of tokenization spaces on top): it saves the Python wrapper's microseconds, twice
    per generated token. None when they differ on a probe or there is no Rust tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        ids = tokenizer.encode("Hello , world . It ' s \"a\" test ! 你好 🙂 \n", add_special_tokens=False)
        ids += list(getattr(tokenizer, "all_special_ids", []))[:3]
        for skip in (True, False):
            if backend.decode(ids, skip_special_tokens=skip) != tokenizer.decode(ids, skip_special_tokens=skip):
                return None
    except Exception:  # noqa: BLE001 - any doubt: the wrapper it is
        return None
    return backend


class IncrementalDetokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._raw = raw_decoder(tokenizer)

    def new_state(self, prompt_ids: list[int], stop: list[str], skip_special_tokens: bool = True,
                  spaces_between_special_tokens: bool = True, no_stop_trim: bool = False) -> DecodeState:
        return DecodeState(prompt_tail=list(prompt_ids[-SURROUNDING_PROMPT_TOKENS:]), stop=list(stop),
                           skip_special_tokens=skip_special_tokens,
                           spaces_between_special_tokens=spaces_between_special_tokens, no_stop_trim=no_stop_trim)

    def _decode(self, st: DecodeState, ids: list[int]) -> str:
        if self._raw is not None:  # fast tokenizers ignore spaces_between_special_tokens anyway
            return self._raw.decode(ids, skip_special_tokens=st.skip_special_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=st.skip_special_tokens,
                                     spaces_between_special_tokens=st.spaces_between_special_tokens)

    def append(self, st: DecodeState, token_ids: list[int]) -> None:
        """Add tokens; complete characters go to ``st.text``; stop strings are searched."""
        st._ids.extend(token_ids)
        prefix_text = self._decode(st, st._ids[st.prefix_offset:st.read_offset])
        new_text = self._decode(st, st._ids[st.prefix_offset:])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT):
            st.text += new_text[len(prefix_text):]
            st.prefix_offset = st.read_offset
            st.read_offset = len(st._ids)
            self._find_stop(st)

    def _find_stop(self, st: DecodeState) -> None:
        if not st.stop or st.matched_stop is not None:
            return
        best = None
        for s in st.stop:
            pos = st.text.find(s, max(0, st._search_from - len(s) + 1))
            if pos >= 0 and (best is None or pos < best[0]):
                best = (pos, s)
        st._search_from = len(st.text)
        if best is not None:
            pos, s = best
            st.matched_stop = s
            st.text = st.text[:pos + len(s)] if st.no_stop_trim else st.text[:pos]

    @staticmethod
    def _holdback(st: DecodeState) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        if st.matched_stop is not None:
            return 0
        best = 0
        for s in st.stop:
            for k in range(min(len(s) - 1, len(st.text)), best, -1):
                if st.text.endswith(s[:k]):
                    best = k
                    break
        return best

    def take_delta(self, st: DecodeState, final: bool = False) -> str:
        """Text that is safe to emit now (all of it when ``final``)."""
        if final:
            self.flush(st)
            end = len(st.text)
        else:
            end = len(st.text) - self._holdback(st)
        if end <= st.sent:
            return ""
        delta = st.text[st.sent:end]
        st.sent = end
        return delta

    def flush(self, st: DecodeState) -> None:
        """At the end: decode what is left, dropping an incomplete trailing character."""
        if st.read_offset < len(st._ids) and st.matched_stop is None:
            prefix_text = self._decode(st, st._ids[st.prefix_offset:st.read_offset])
            new_text = self._decode(st, st._ids[st.prefix_offset:]).rstrip(REPLACEMENT)
            if len(new_text) > len(prefix_text):
                st.text += new_text[len(prefix_text):]
                st.read_offset = len(st._ids)
                self._find_stop(st)
