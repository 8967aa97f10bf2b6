"""Multi-turn chat with and without prefix reuse: the seed article's table (``python -m sgl_jupyter.bench
multiturn``).

``num_users`` users chat at the same time, ``num_turns`` turns each, all behind one shared system prompt.
Turn k sends the whole conversation so far (system prompt, the k-1 earlier questions and answers, the new
question), as a chat client does. The same workload runs twice: on an engine with the radix cache and on
one with ``disable_radix_cache=True``, which stands for an engine without prefix reuse (the seed's vLLM
column): every turn recomputes the whole history. Before the chats the shared system prompt is prefilled
once, untimed and uncounted, as on an engine that has served the app before (``warm_system_prompt``).

TTFT is what a caller sees: from submitting the streamed request to its first token. The history is kept
as token ids (earlier prompt + the answer's ``output_ids`` + the chat template's next user turn), so the
prefix a turn shares with the previous one is exact also with dummy weights, whose answers do not survive
a decode/encode round trip.
"""
from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import pandas as pd

from .workload import ChatWorkload, chat_workload

OFF, ON = "off (no prefix reuse)", "on (radix cache)"


@dataclass
class MultiturnConfig:
    num_users: int = 4
    num_turns: int = 5
    system_tokens: int = 512  # the shared system prompt
    user_tokens: int = 32  # each question
    answer_tokens: int = 24  # each answer, exactly (min_new_tokens = max_new_tokens)
    model_path: Optional[str] = None  # None: the embedded model
    device: str = "auto"
    dtype: str = "auto"
    load_format: str = "auto"  # "dummy": random weights from the model directory's config.json
    engine_kwargs: dict = field(default_factory=dict)  # more EngineArgs, e.g. max_total_tokens
    warm_system_prompt: bool = True  # the shared system prompt prefilled (untimed) before the chats
    seed: int = 0

    def engine_args(self, radix: bool) -> dict:
        return {"device": self.device, "dtype": self.dtype, "load_format": self.load_format,
                **self.engine_kwargs, "disable_radix_cache": not radix}


class ChatHistory:
    """One user's conversation as token ids. Turn 1 is the chat template applied to (system, question);
    turn k > 1 is turn k-1's prompt + its answer ids + the template's text between that answer and the
    next generation prompt (end of turn, the new question, the assistant header)."""

    _MARK = "\x00ANSWER\x00"

    def __init__(self, tokenizer, system: str):
        self.tokenizer, self.system = tokenizer, system
        self.ids: list[int] = []

    def _render(self, messages: list[dict]) -> str:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

    def _tail(self, question: str) -> str:
        """The template's text after an answer, up to the next generation prompt."""
        head = [{"role": "system", "content": self.system}, {"role": "user", "content": "?"}]
        before = self._render(head)
        full = self._render(head + [{"role": "assistant", "content": self._MARK},
                                    {"role": "user", "content": question}])
        if full.startswith(before + self._MARK):
            return full[len(before) + len(self._MARK):]
        return f"\nuser: {question}\nassistant:"  # a template that rewrites earlier turns: plain turns

    def system_prefix(self) -> list[int]:
        """The ids every user's first prompt starts with (the system prompt, as the template renders it)."""
        a, b = (self.tokenizer.encode(self._render([{"role": "system", "content": self.system},
                                                    {"role": "user", "content": q}]), add_special_tokens=False)
                for q in ("A?", "Z!"))
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return a[:n]

    def ask(self, question: str, previous_answer: Optional[list[int]] = None) -> list[int]:
        """The prompt ids of the next turn."""
        encode = lambda text: self.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        if not self.ids:
            self.ids = encode(self._render([{"role": "system", "content": self.system},
                                            {"role": "user", "content": question}]))
        else:
            self.ids = self.ids + list(previous_answer or []) + encode(self._tail(question))
        return self.ids


def _chat(engine, history: ChatHistory, questions: list[str], params: dict, user: int, rows: list,
          lock: threading.Lock, tick: Callable[[], None]) -> None:
    answer: Optional[list[int]] = None
    for turn, question in enumerate(questions, start=1):
        ids = history.ask(question, answer)
        t0 = time.perf_counter()
        ttft, last = None, None
        for chunk in engine.generate(input_ids=ids, sampling_params=params, stream=True):
            if ttft is None and chunk["output_ids"]:
                ttft = time.perf_counter() - t0
            last = chunk
        end = time.perf_counter()
        answer = last["output_ids"]
        meta = last["meta_info"]
        with lock:
            rows.append({"user": user, "turn": turn, "prompt_tokens": meta["prompt_tokens"],
                         "cached_tokens": meta["cached_tokens"], "completion_tokens": meta["completion_tokens"],
                         "ttft_s": ttft, "e2e_s": end - t0, "start": t0, "end": end})
        tick()


def run_chats(engine, workload: ChatWorkload, answer_tokens: int, progress: Any = None,
              warm_system_prompt: bool = True) -> pd.DataFrame:
    """Every user's chat on its own thread, all at once; one row per request. ``warm_system_prompt``: first
    prefill the shared system prompt, untimed, as a deployed app's would already be (else users who arrive
    together all miss it at turn 1: they are prefilled in one batch, before any of them is cached)."""
    params = {"max_new_tokens": answer_tokens, "min_new_tokens": answer_tokens, "temperature": 0}
    # warm-up outside the timing (first-call allocations), then an empty cache
    engine.generate(input_ids=ChatHistory(engine.tokenizer, "warm").ask("up"), sampling_params={"max_new_tokens": 2})
    if not engine.flush_cache():
        raise RuntimeError("the engine is busy (requests running): cannot start from an empty cache")
    if warm_system_prompt:
        engine.generate(input_ids=ChatHistory(engine.tokenizer, workload.system).system_prefix(),
                        sampling_params={"max_new_tokens": 0})
    rows: list[dict] = []
    lock = threading.Lock()
    tick = (lambda: progress.update(1)) if progress is not None else (lambda: None)
    threads = [threading.Thread(target=_chat, name=f"multiturn-user-{u}", daemon=True,
                                args=(engine, ChatHistory(engine.tokenizer, workload.system), questions, params,
                                      u, rows, lock, tick))
               for u, questions in enumerate(workload.turns)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if len(rows) != sum(len(q) for q in workload.turns):
        raise RuntimeError("a chat thread failed (see its traceback above)")
    df = pd.DataFrame(rows).sort_values(["user", "turn"]).reset_index(drop=True)
    t0 = df["start"].min()
    df["start"], df["end"] = df["start"] - t0, df["end"] - t0
    return df


def run(cfg: Optional[MultiturnConfig] = None, engine=None, progress: bool = True,
        on_engine: Optional[Callable[[Any, str], None]] = None) -> pd.DataFrame:
    """Both runs (radix off, then on); one row per request with a ``radix`` column. ``engine``: a loaded
    engine with the radix cache to use for the "on" run (e.g. the notebook's); the "off" engine is then
    built with its arguments. ``on_engine(engine, label)`` is called before each run (show a live view)."""
    from tqdm.auto import tqdm

    from sgl_jupyter import Engine

    cfg = cfg or MultiturnConfig()
    if engine is not None and engine.args.disable_radix_cache:
        raise ValueError("pass an engine with the radix cache on (it is the 'on' run)")
    if engine is not None:  # the off engine mirrors the given one
        args = engine.args.to_dict()
        args.pop("extra", None)
        make = {OFF: lambda: Engine(**{**args, "disable_radix_cache": True})}
    else:
        make = {OFF: lambda: Engine(cfg.model_path, **cfg.engine_args(radix=False)),
                ON: lambda: Engine(cfg.model_path, **cfg.engine_args(radix=True))}
    frames = []
    bar = tqdm(total=2 * cfg.num_users * cfg.num_turns, desc="multi-turn chats", disable=not progress)
    try:
        for label in (OFF, ON):
            bar.set_description(f"radix {label}: loading")
            eng = engine if (label == ON and engine is not None) else make[label]()
            try:
                workload = chat_workload(eng.tokenizer, cfg.num_users, cfg.num_turns, cfg.system_tokens,
                                         cfg.user_tokens, cfg.seed)
                if on_engine is not None:
                    on_engine(eng, label)
                bar.set_description(f"radix {label}")
                df = run_chats(eng, workload, cfg.answer_tokens, bar, cfg.warm_system_prompt)
            finally:
                if eng is not engine:
                    eng.shutdown()
            df.insert(0, "radix", label)
            frames.append(df)
    finally:
        bar.close()
    out = pd.concat(frames, ignore_index=True)
    out.attrs["config"] = {k: v for k, v in vars(cfg).items() if k != "engine_kwargs"}
    return out


def _turn_ttft(df: pd.DataFrame, turn: int) -> float:
    return statistics.median(df.loc[df.turn == turn, "ttft_s"])


def summary(df: pd.DataFrame, turn: Optional[int] = None) -> pd.DataFrame:
    """The seed's table: per radix setting the turn-``turn`` TTFT (median over users, ms; default the last
    turn), the cache hit rate (prompt tokens served from the cache / all prompt tokens), and requests/s (all
    requests / the run's wall time). ``attrs``: ``ttft_ratio`` (on / off), ``hit_rate`` (on), ``turn``."""
    turn = turn or int(df.turn.max())
    rows = []
    for label in (OFF, ON):
        sub = df[df.radix == label]
        if sub.empty:
            continue
        rows.append({"radix cache": label, f"turn-{turn} TTFT (ms)": 1000 * _turn_ttft(sub, turn),
                     "cache hit rate": sub.cached_tokens.sum() / sub.prompt_tokens.sum(),
                     "req/s": len(sub) / sub.end.max(),
                     f"turn-{turn} prompt tokens": int(sub.loc[sub.turn == turn, "prompt_tokens"].median()),
                     "requests": len(sub)})
    table = pd.DataFrame(rows).set_index("radix cache")
    if len(table) == 2:
        table.attrs["ttft_ratio"] = table.iloc[1, 0] / table.iloc[0, 0]
        table.attrs["hit_rate"] = float(table.iloc[1]["cache hit rate"])
        table.attrs["speedup_req_s"] = table.iloc[1]["req/s"] / table.iloc[0]["req/s"]
    table.attrs["turn"] = turn
    return table


def by_turn(df: pd.DataFrame) -> pd.DataFrame:
    """Per radix setting and turn: median TTFT (ms), hit rate, prompt tokens."""
    g = df.groupby(["radix", "turn"])
    return pd.DataFrame({"ttft_ms": 1000 * g.ttft_s.median(), "hit_rate": g.cached_tokens.sum() / g.prompt_tokens.sum(),
                         "prompt_tokens": g.prompt_tokens.median()}).reset_index()


def plot(df: pd.DataFrame):
    """TTFT by turn (radix on vs off) and the cache hit rate by turn; returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    turns = by_turn(df)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for label, marker in ((OFF, "o"), (ON, "s")):
        sub = turns[turns.radix == label]
        ax1.plot(sub.turn, sub.ttft_ms, marker=marker, label=f"radix {label}")
    ax1.set(xlabel="turn", ylabel="TTFT, median over users (ms)", title="Time to first token by turn")
    ax1.set_xticks(sorted(turns.turn.unique()))
    ax1.legend()
    ax1.grid(alpha=0.3)
    on = turns[turns.radix == ON]
    ax2.bar(on.turn, 100 * on.hit_rate, color="tab:orange")
    for x, y in zip(on.turn, 100 * on.hit_rate):
        ax2.annotate(f"{y:.0f}%", (x, y), ha="center", va="bottom")
    ax2.set(xlabel="turn", ylabel="prompt tokens from the cache (%)", ylim=(0, 105),
            title="Radix cache hit rate by turn")
    ax2.set_xticks(sorted(on.turn.unique()))
    fig.tight_layout()
    return fig


def run_cli(args) -> pd.DataFrame:
    """Entry for ``python -m sgl_jupyter.bench multiturn`` (which prints ``summary`` and ``headline``)."""
    cfg = MultiturnConfig(model_path=args.model_path, device=args.device, dtype=args.dtype,
                          load_format=args.load_format, engine_kwargs=getattr(args, "engine_kwargs", {}))
    for name in ("num_users", "num_turns", "system_tokens", "user_tokens", "answer_tokens"):
        if getattr(args, name, None):
            cfg = replace(cfg, **{name: getattr(args, name)})
    return run(cfg)


def headline(table: pd.DataFrame) -> str:
    """One line for the summary table: the TTFT ratio, the hit rate, the req/s gain."""
    a = table.attrs
    return (f"turn-{a['turn']} TTFT radix on / off = {a['ttft_ratio']:.3f}x; cache hit rate {a['hit_rate']:.1%}; "
            f"req/s x{a['speedup_req_s']:.2f}")
