"""Routing policies through the router, in one run on one 2-replica cluster (``python -m sgl_jupyter.bench
router``): cache-aware vs round-robin.

Case "own histories": ``num_users`` users chat at once, ``num_turns`` turns each; every prompt is a short
shared system prompt, the user's own ~``doc_tokens``-token document, then the conversation so far. A turn
reuses the user's previous prompt only on the replica that served it, so routing decides the cache hits.
Case "long shared prefix": one long system prompt for everyone and short histories: every replica soon
holds the shared part, so every policy hits (the case where routing does not matter).

Each replica's KV cache (``max_total_tokens``, 16384 by default) holds its half of the users' histories
(8 x ~1.5k tokens) but not all 16: the regime data-parallel serving is in (KV is what runs out), where
routing decides whether a replica must cache every user or only its own. With room for everything on every
replica (32768), round-robin also finds most histories on both replicas after a few turns.

Before each (case, policy) run every replica's cache is flushed and the router's policy switched through
its deployment handle. Hit rate = cached prompt tokens / prompt tokens of turns 2..N (from the engines'
own ``meta_info``); TTFT = request sent to first streamed token, through HTTP and the router.
"""
from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import httpx
import pandas as pd

CASES = ("own histories", "long shared prefix")
POLICY_RUNS = ("cache-aware", "round-robin")


@dataclass
class RouterBenchConfig:
    num_users: int = 16
    num_turns: int = 5
    system_tokens: int = 48  # case 1: short shared system prompt
    doc_tokens: int = 1000  # case 1: each user's own document
    shared_tokens: int = 1000  # case 2: the long shared system prompt
    shared_users: int = 8  # case 2
    shared_turns: int = 3  # case 2
    question_tokens: int = 16
    answer_tokens: int = 8
    replicas: int = 2
    model_path: Optional[str] = None
    engine_kwargs: dict = field(default_factory=lambda: {"device": "cpu", "max_total_tokens": 16384})
    seed: int = 0


def _words(rng: random.Random, n_tokens: int, lead: str) -> str:
    from .workload import _SENTENCES

    text, approx = lead, 0
    while approx < n_tokens:  # ~1.3 tokens per word for these sentences; exactness is not needed here
        sentence = rng.choice(_SENTENCES)
        text += " " + sentence
        approx += int(len(sentence.split()) * 1.3) + 1
    return text


def _conversations(cfg: RouterBenchConfig, case: str) -> list[tuple[str, list[str]]]:
    """(opening text, questions) per user."""
    rng = random.Random(cfg.seed)
    if case == CASES[0]:
        system = _words(rng, cfg.system_tokens, "System: you are a helpful assistant; answer briefly.")
        users = [(f"{system}\nDocument of user {u}: " + _words(rng, cfg.doc_tokens, f"(user {u})"), cfg.num_turns)
                 for u in range(cfg.num_users)]
    else:
        system = _words(rng, cfg.shared_tokens, "System: you are a helpful assistant. The house rules follow.")
        users = [(system, cfg.shared_turns) for _ in range(cfg.shared_users)]
    return [(opening, [f"\nQuestion {k + 1} of user {u}: " + _words(rng, cfg.question_tokens, "") + "\nAnswer:"
                       for k in range(turns)]) for u, (opening, turns) in enumerate(users)]


def _stream(client: httpx.Client, url: str, text: str, answer_tokens: int) -> dict:
    t0 = time.perf_counter()
    ttft, last = None, None
    with client.stream("POST", url + "/generate", json={
            "text": text, "stream": True,
            "sampling_params": {"max_new_tokens": answer_tokens, "temperature": 0, "ignore_eos": True}}) as res:
        res.raise_for_status()
        for line in res.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if ttft is None:
                ttft = time.perf_counter() - t0
            last = json.loads(line[6:])
    meta = last["meta_info"]
    return {"ttft_s": ttft, "latency_s": time.perf_counter() - t0, "text": last["text"],
            "prompt_tokens": meta["prompt_tokens"], "cached_tokens": meta.get("cached_tokens", 0)}


def run_case(url: str, cfg: RouterBenchConfig, case: str, policy: str) -> list[dict]:
    """Every user's conversation at once; one row per request."""
    rows: list[dict] = []
    lock = threading.Lock()

    def chat(user: int, opening: str, questions: list[str]) -> None:
        history = opening
        with httpx.Client(timeout=900) as client:
            for turn, question in enumerate(questions, 1):
                history += question
                r = _stream(client, url, history, cfg.answer_tokens)
                history += r.pop("text")
                with lock:
                    rows.append({"case": case, "policy": policy, "user": user, "turn": turn, **r})

    threads = [threading.Thread(target=chat, args=(u, o, q)) for u, (o, q) in enumerate(_conversations(cfg, case))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return rows


def run(cfg: Optional[RouterBenchConfig] = None) -> pd.DataFrame:
    """Start the cluster, run both cases under both policies, stop it; one row per request."""
    from ray import serve

    from ..cluster.launch import APP_NAME, ClusterOptions, ClusterServer

    cfg = cfg or RouterBenchConfig()
    engine_kwargs = {"model_path": cfg.model_path, **cfg.engine_kwargs}
    rows: list[dict] = []
    with ClusterServer(engine_kwargs, ClusterOptions(replicas=cfg.replicas, port=0)) as cluster:
        router = serve.get_app_handle(APP_NAME)
        for case in CASES:
            for policy in POLICY_RUNS:
                router.set_policy.remote(policy).result()
                res = httpx.post(cluster.url + "/flush_cache", timeout=120)
                res.raise_for_status()
                before = router.routing_stats.remote().result()
                t0 = time.perf_counter()
                case_rows = run_case(cluster.url, cfg, case, policy)
                wall = time.perf_counter() - t0
                after = router.routing_stats.remote().result()
                for r in case_rows:
                    r["wall_s"] = wall
                    r["kv_tokens_per_replica"] = engine_kwargs.get("max_total_tokens")
                    r["imbalance_fallbacks"] = after["imbalance_fallbacks"] - before["imbalance_fallbacks"]
                    r["routed"] = [a - b for a, b in zip(after["routed"], before["routed"])]
                rows.extend(case_rows)
                print(f"[bench router] {case} / {policy}: {len(case_rows)} requests in {wall:.1f}s", flush=True)
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (case, policy): hit rate and mean TTFT on turns 2..N, turn-1 TTFT, routing; ratios in attrs."""
    out = []
    for (case, policy), g in df.groupby(["case", "policy"], sort=False):
        later = g[g.turn > 1]
        out.append({"case": case, "policy": policy, "requests": len(g),
                    "hit_rate_turns_2+": later.cached_tokens.sum() / max(later.prompt_tokens.sum(), 1),
                    "mean_ttft_turns_2+_s": later.ttft_s.mean(), "mean_ttft_turn_1_s": g[g.turn == 1].ttft_s.mean(),
                    "mean_ttft_all_s": g.ttft_s.mean(), "wall_s": g.wall_s.iloc[0],
                    "routed_per_replica": str(g.routed.iloc[0]), "imbalance_fallbacks": g.imbalance_fallbacks.iloc[0]})
    table = pd.DataFrame(out).set_index(["case", "policy"])
    own = table.loc[CASES[0]]
    table.attrs = {
        "hit_rate_ratio": own.loc["cache-aware", "hit_rate_turns_2+"] / max(own.loc["round-robin", "hit_rate_turns_2+"],
                                                                            1e-9),
        "ttft_ratio_rr_over_ca": own.loc["round-robin", "mean_ttft_turns_2+_s"] / own.loc["cache-aware",
                                                                                         "mean_ttft_turns_2+_s"],
        "cache_aware_hit_rate": own.loc["cache-aware", "hit_rate_turns_2+"],
        "round_robin_hit_rate": own.loc["round-robin", "hit_rate_turns_2+"],
    }
    return table


def headline(table: pd.DataFrame) -> str:
    a = table.attrs
    return (f"own histories, turns 2+: cache hit rate cache-aware {a['cache_aware_hit_rate']:.3f} vs round-robin "
            f"{a['round_robin_hit_rate']:.3f} ({a['hit_rate_ratio']:.2f}x); mean TTFT round-robin / cache-aware = "
            f"{a['ttft_ratio_rr_over_ca']:.2f}x")


def run_cli(args: Any) -> pd.DataFrame:
    """Entry for ``python -m sgl_jupyter.bench router``."""
    cfg = RouterBenchConfig(model_path=args.model_path)
    if getattr(args, "num_users", None):
        cfg.num_users = args.num_users
    if getattr(args, "num_turns", None):
        cfg.num_turns = args.num_turns
    if getattr(args, "answer_tokens", None):
        cfg.answer_tokens = args.answer_tokens
    if args.device != "auto":
        cfg.engine_kwargs["device"] = args.device
    cfg.engine_kwargs.update(getattr(args, "engine_kwargs", {}) or {})
    return run(cfg)

