"""Multi-step decode launches (CUDA graphs) overlapped with the host: the next launch is enqueued
before the previous launch's tokens are committed (SGLang's overlap scheduling). A mixin of ``Scheduler``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .cuda_graph_runner import LaunchSampling, MultiStepLaunch
from .request import Req


@dataclass
class InFlight:
    """A multi-step decode launched and not yet committed: its batch, in launch order, and its handle."""
    batch: list[Req]
    handle: MultiStepLaunch



class OverlapPipeline:
    def _multi_step_ok(self, batch: list[Req], pending: int = 0) -> bool:
        """Several decode steps per launch (CUDA graphs) pay off when the host has nothing to do between
        tokens: every request greedy (or sampled, where the graphs sample on the device) and free of grammar, penalties, logprobs and pending min_new_tokens,
        nobody waiting who could be admitted now (a request row free), room in the KV pool and the context
        for all the steps, and few steps run past the requests' max_new_tokens (a request that ends inside
        a launch wastes the rest of it; at most a quarter of the launch's rows may be such waste).
        ``pending``: tokens per request launched but not yet committed (their KV is in ``kv_len``)."""
        k = self.continuous_decode_steps
        sampled_ok = self.runner.multi_step_sampling
        admissible = self.waiting and self.num_running < self.limits.max_running
        if admissible or not batch or len(batch) > self.runner.multi_step_batch_limit():
            return False
        waste = 0
        for r in batch:
            p = r.params
            if ((not p.is_greedy and (not sampled_ok or r.sample_seed is None)) or r.grammar is not None or r.return_logprob or p.needs_penalties
                    or len(r.output_ids) < p.min_new_tokens or r.abort_requested
                    or r.kv_len + k >= self.limits.max_context):
                return False
            waste += max(0, k - (p.max_new_tokens - len(r.output_ids) - pending))
        if 4 * waste > k * len(batch):
            return False
        need = k * len(batch)
        if self.kv_pool.free_size < need:
            self.cache.evict(need - self.kv_pool.free_size)
        return self.kv_pool.free_size >= need

    def _run_decode_multi_step(self, batch: list[Req], carry: Optional[list[int]] = None) -> None:
        """Launch ``continuous_decode_steps`` greedy tokens per request in one graph and leave them in
        flight: the next step commits them, one at a time as single steps would (a request that stops
        early gives back the KV of the steps it did not need; its output is the same as step-by-step
        decoding). ``carry[i]``: the index in the launch in flight whose last token feeds ``batch[i]`` (it
        is still on the device); see ``_step_in_flight``."""
        k, n = self.continuous_decode_steps, len(batch)
        locs = self.kv_pool.alloc(k * n).view(k, n)
        rows = torch.tensor([r.row for r in batch])
        positions = torch.tensor([r.kv_len for r in batch]).view(1, n) + torch.arange(k).view(k, 1)
        self.req_pool.mirror_cells(rows.expand(k, n), positions, locs)  # the launch writes the device's
        sampling = _launch_sampling(batch)
        launch = self.runner.launch_decode_multi_step([r.last_id for r in batch], [r.kv_len for r in batch],
                                                      locs, [r.row for r in batch], carry, sampling)
        self.sampled_launches += sampling is not None
        self._decode_steps += k
        self._last_num_tokens = n
        self.forward_tokens_total += k * n
        for req in batch:
            req.kv_len += k  # the steps write KV for the last token and the first k-1 new ones
        self._in_flight = InFlight(list(batch), launch)

    def _step_in_flight(self) -> None:
        """Commit the launch in flight; before that, launch the next steps for the requests that go on
        (SGLang's overlap scheduling, for multi-step decode), so the host's work on one launch overlaps
        the GPU's on the next. Who goes on is known before the commit except for stops the host has not
        seen yet (EOS, stop strings): the requests that reach max_new_tokens in the launch, and aborted
        ones, are left out; one that stops early runs one launch too many, whose tokens are dropped and
        whose KV goes back when it finishes."""
        prev, self._in_flight = self._in_flight, None
        k = self.continuous_decode_steps
        index = {id(r): i for i, r in enumerate(prev.batch)}  # requests stopped earlier are not running
        if self.chunked is None and all(id(r) in index for r in self.running):
            nxt = [r for r in self.running
                   if not r.abort_requested and len(r.output_ids) + k < r.params.max_new_tokens]
            if self._multi_step_ok(nxt, pending=k):
                self._run_decode_multi_step(nxt, carry=[index[id(r)] for r in nxt])
                self.overlapped_launches += 1
        self._commit_launch(prev)

    def _commit_launch(self, launch: InFlight) -> None:
        tokens = launch.handle.tokens()
        added = 0
        for i, req in enumerate(launch.batch):
            if req.finished:  # it ended in the launch before; this one ran on past its end
                continue
            added += self._commit(req, [step[i] for step in tokens])
        self._record_tokens(added)

    def drain_in_flight(self) -> None:
        """Commit a launch in flight (before the requests are touched from outside a step)."""
        if self._in_flight is not None:
            prev, self._in_flight = self._in_flight, None
            self._commit_launch(prev)

    def discard_in_flight(self) -> None:
        """Forget a launch in flight without committing it (the engine is resetting after a failure)."""
        self._in_flight = None



def _launch_sampling(batch: list[Req]) -> Optional[LaunchSampling]:
    """The batch's per-row sampling parameters, or None when every row is greedy (the argmax graphs)."""
    if all(r.params.is_greedy for r in batch):
        return None
    ps = [r.params for r in batch]
    return LaunchSampling([p.temperature for p in ps], [p.top_k for p in ps], [p.top_p for p in ps],
                          [p.min_p for p in ps], [r.sample_seed & 0x7FFFFFFF for r in batch])
