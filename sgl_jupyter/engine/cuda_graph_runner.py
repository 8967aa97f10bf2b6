"""Decode forwards replayed from CUDA graphs.

A decode step of a small batch is a few hundred tiny kernels whose launch cost exceeds their run
time; replaying a captured graph launches them all at once. Graphs are captured at start-up for a
ladder of batch sizes up to ``cuda_graph_max_bs`` over static input buffers; a batch is padded up
to the next captured size (padding rows write to the scratch KV slot 0 and their logits are
dropped). Capture needs an attention backend whose decode path makes no host sync and no
allocation (the Triton backend); the KV pool and request table already exist, so the graphs read
them in place."""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch

from .forward_batch import ForwardBatch, ForwardMode
from .sampling import step_seeds

if TYPE_CHECKING:
    from .attention.base import AttentionBackend

logger = logging.getLogger(__name__)


@dataclass
class MultiStepLaunch:
    """A multi-step decode enqueued on the GPU: ``host`` [steps, B] fills when ``done`` fires."""
    host: torch.Tensor
    done: torch.cuda.Event

    def tokens(self) -> list[list[int]]:
        """[steps][B] token ids; waits for the launch."""
        self.done.synchronize()
        return self.host.tolist()


@dataclass
class LaunchSampling:
    """Per-row sampling parameters of a sampled multi-step launch (lists of the batch's length); ``seeds``
    are the requests' sample seeds masked to 31 bits (sampling.step_seed)."""
    temperature: list[float]
    top_k: list[int]
    top_p: list[float]
    min_p: list[float]
    seeds: list[int]


def _graph_sampler(device: torch.device):
    """The Triton sampler when it can run inside the graphs, else None (greedy graphs only)."""
    from .sampling import _device_sampler

    return _device_sampler() if device.type == "cuda" else None


def capture_batch_sizes(max_bs: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to 256, every 16 up to 512, every 32 beyond, and ``max_bs`` (SGLang's
    kind of ladder: padding wastes at most 7 rows where decode is weight-bound, a few percent above)."""
    sizes = [b for b in (1, 2, 4) if b < max_bs] + list(range(8, min(max_bs, 256) + 1, 8))
    sizes += list(range(272, min(max_bs, 512) + 1, 16)) + list(range(544, max_bs + 1, 32))
    if not sizes or sizes[-1] != max_bs:
        sizes.append(max_bs)
    return sorted(set(sizes))


def multi_step_batch_sizes(batch_sizes: list[int], max_bs: int) -> list[int]:
    """The ladder sizes that get a multi-step graph: powers of two up to 32, then every multiple of 32, and
    the largest. Each costs ``steps`` forwards to capture, so not every size gets one; large batches are
    compute-bound, so padding them to the next multiple of 32 costs at most a few percent."""
    top = max([b for b in batch_sizes if b <= max_bs] or [batch_sizes[0]])
    return [b for b in batch_sizes if b <= top and ((b <= 32 and b & (b - 1) == 0) or b % 32 == 0 or b == top)]


class CudaGraphRunner:
    def __init__(self, forward_eager: Callable[[ForwardBatch], torch.Tensor], backend: "AttentionBackend",
                 req_to_token: torch.Tensor, max_bs: int, device: torch.device, progress: bool = False):
        self.forward_eager, self.backend, self.req_to_token = forward_eager, backend, req_to_token
        self.device = device
        self.batch_sizes = capture_batch_sizes(max_bs)
        self.max_bs = self.batch_sizes[-1]
        n = self.max_bs
        z = lambda: torch.zeros(n, dtype=torch.int64, device=device)  # noqa: E731
        self.input_ids, self.positions, self.out_cache_loc, self.req_pool_indices = z(), z(), z(), z()
        self.seq_lens = torch.ones(n, dtype=torch.int64, device=device)
        self.prefix_lens = z()
        self.extend_lens = torch.ones(n, dtype=torch.int64, device=device)
        self.logits_indices = torch.arange(n, dtype=torch.int64, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        if hasattr(backend, "init_cuda_graph_state"):
            backend.init_cuda_graph_state(self.max_bs)
        self._capture_all(progress)

    def _static_batch(self, bs: int) -> ForwardBatch:
        return ForwardBatch(
            mode=ForwardMode.DECODE, input_ids=self.input_ids[:bs], positions=self.positions[:bs],
            out_cache_loc=self.out_cache_loc[:bs], req_pool_indices=self.req_pool_indices[:bs],
            seq_lens=self.seq_lens[:bs], prefix_lens=self.prefix_lens[:bs], extend_lens=self.extend_lens[:bs],
            seq_lens_cpu=[1] * bs, prefix_lens_cpu=[0] * bs, extend_lens_cpu=[1] * bs,
            req_to_token=self.req_to_token, logits_indices=self.logits_indices[:bs])

    def _capture_all(self, progress: bool) -> None:
        from tqdm.auto import tqdm

        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        sizes = list(reversed(self.batch_sizes))  # largest first: smaller graphs reuse its memory
        for bs in tqdm(sizes, desc="capturing CUDA graphs", disable=not progress, leave=False):
            fb = self._static_batch(bs)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up: Triton autotune/jit and cuBLAS workspaces happen outside capture
                    self.forward_eager(self._static_batch(bs))
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream):
                out = self.forward_eager(fb)
            self.graphs[bs], self.outputs[bs] = graph, out
        torch.cuda.synchronize(self.device)
        logger.info("captured CUDA graphs for decode batch sizes %s", self.batch_sizes)

    # ------------------------------------------------------------------ several decode steps per replay
    def capture_multi_step(self, steps: int, max_bs: int, progress: bool = False, sampled: bool = True) -> None:
        """Graphs that run ``steps`` greedy decode steps back to back, each step's argmax feeding the next
        step's input on the device: the host pays one launch and one sync for ``steps`` tokens. SGLang's
        ``--num-continuous-decode-steps``; only for requests whose next token needs no host work (greedy,
        no grammar, penalties or logprobs), see Scheduler._multi_step_ok. With ``sampled``, a second graph
        per size draws each step's token on the device (kernels/sampling.py, per-row parameters and seeds)
        instead of the argmax, so sampled batches keep the multi-step, overlapped path."""
        from tqdm.auto import tqdm

        self.steps = steps
        sizes = multi_step_batch_sizes(self.batch_sizes, max_bs)
        n = self.max_bs
        self.ms_ids = torch.zeros(steps + 1, n, dtype=torch.int64, device=self.device)
        self.ms_pos = torch.zeros(steps, n, dtype=torch.int64, device=self.device)
        self.ms_loc = torch.zeros(steps, n, dtype=torch.int64, device=self.device)
        self.ms_seq = torch.ones(steps, n, dtype=torch.int64, device=self.device)
        self.ms_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        # sampled variant: per-row temperature/top-k/top-p/min-p and seeds, the Triton sampler in the graph
        self.ms_sampled_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.ms_temp = torch.zeros(n, dtype=torch.float32, device=self.device)
        self.ms_top_p = torch.ones(n, dtype=torch.float32, device=self.device)
        self.ms_min_p = torch.zeros(n, dtype=torch.float32, device=self.device)
        self.ms_top_k = torch.full((n,), -1, dtype=torch.int64, device=self.device)
        self.ms_seed = torch.zeros(n, dtype=torch.int64, device=self.device)
        sampler = _graph_sampler(self.device) if sampled else None
        n_in = 5 * n + 2 * steps * n  # ids, carry, rows, positions, slots (+ top_k, seeds when sampled)
        self.ms_host_in = [torch.empty(n_in, dtype=torch.int64, pin_memory=True) for _ in range(2)]
        self.ms_host_f = [torch.empty(3 * n, dtype=torch.float32, pin_memory=True) for _ in range(2)]
        self.ms_host_out = [torch.empty(steps * n, dtype=torch.int64, pin_memory=True) for _ in range(2)]
        self._ms_flip = 0
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)

        def run_steps(bs: int, sample=None) -> None:
            for j in range(steps):
                fb = ForwardBatch(
                    mode=ForwardMode.DECODE, input_ids=self.ms_ids[j, :bs], positions=self.ms_pos[j, :bs],
                    out_cache_loc=self.ms_loc[j, :bs], req_pool_indices=self.req_pool_indices[:bs],
                    seq_lens=self.ms_seq[j, :bs], prefix_lens=self.prefix_lens[:bs], extend_lens=self.extend_lens[:bs],
                    seq_lens_cpu=[1] * bs, prefix_lens_cpu=[0] * bs, extend_lens_cpu=[1] * bs,
                    req_to_token=self.req_to_token, logits_indices=self.logits_indices[:bs])
                logits = self.forward_eager(fb)
                if sample is None:
                    self.ms_ids[j + 1, :bs].copy_(logits.argmax(dim=-1))
                else:  # the token at position p + 1 draws with step_seed(seed, p + 1), as eager steps do
                    seeds = step_seeds(self.ms_seed[:bs], self.ms_pos[j, :bs] + 1)
                    self.ms_ids[j + 1, :bs].copy_(sample(logits, self.ms_temp[:bs], self.ms_top_k[:bs],
                                                         self.ms_top_p[:bs], self.ms_min_p[:bs], seeds))

        def capture(bs: int, sample=None) -> torch.cuda.CUDAGraph:
            self.req_pool_indices.zero_()
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                run_steps(bs, sample)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream):
                run_steps(bs, sample)
            return graph

        for bs in tqdm(list(reversed(sizes)), desc=f"capturing {steps}-step decode graphs", disable=not progress,
                       leave=False):
            self.ms_graphs[bs] = capture(bs)
            if sampler is not None:
                try:
                    self.ms_sampled_graphs[bs] = capture(bs, sampler)
                except torch.OutOfMemoryError:
                    raise
                except Exception as e:  # noqa: BLE001 - sampled batches then decode one step at a time
                    logger.warning("device sampling inside decode graphs is off: capturing it failed: %r", e)
                    sampler, self.ms_sampled_graphs = None, {}
        self.ms_max_bs = max(sizes)
        torch.cuda.synchronize(self.device)

    def launch_multi_step(self, input_ids: list[int], positions: list[int], locs: torch.Tensor, rows: list[int],
                          carry: Optional[list[int]] = None,
                          sampling: Optional["LaunchSampling"] = None) -> "MultiStepLaunch":
        """Enqueue ``steps`` greedy tokens per request and return at once; the tokens arrive in a pinned
        host buffer (``MultiStepLaunch.tokens()`` waits for them). ``positions`` are each request's first
        new position; ``locs`` [steps, B] the KV slots of the steps (written into the device's request
        table here; the caller keeps its host copy). ``carry[i] >= 0``: row i goes on from
        the last token of row ``carry[i]`` of the previous launch, still on the device (its ``input_ids``
        entry is ignored), so a launch can follow one whose tokens the host has not seen yet, even when
        requests left the batch in between.
        Nothing here waits for the GPU (pinned staging both ways), so the host can commit the previous
        launch's tokens while this one runs. ``sampling``: per-row parameters for the sampled graphs
        (None: greedy)."""
        bs, k = len(positions), self.steps
        gbs = min(b for b in self.ms_graphs if b >= bs)
        pos = torch.tensor(positions, dtype=torch.int64).view(1, bs) + torch.arange(k).view(k, 1)
        extra = sampling.top_k + sampling.seeds if sampling is not None else []
        host = torch.cat([torch.tensor(input_ids + (carry or []) + rows + extra, dtype=torch.int64), pos.flatten(),
                          locs.to(torch.int64).flatten()])
        # two pinned buffers each way, used alternately: the one written now was last read by the launch
        # before the previous one, which the caller has waited for
        flip = self._ms_flip
        self._ms_flip ^= 1
        staged = self.ms_host_in[flip][:host.numel()]
        staged.copy_(host)
        dev = staged.to(self.device, non_blocking=True)
        ids_t, carry_t, rows_t, extra_t, pos_t, loc_t = dev.split([bs, bs if carry else 0, bs, len(extra),
                                                                   k * bs, k * bs])
        graph = self.ms_graphs[gbs]
        if sampling is not None:
            staged_f = self.ms_host_f[flip][:3 * bs]
            staged_f.copy_(torch.tensor(sampling.temperature + sampling.top_p + sampling.min_p, dtype=torch.float32))
            temp_t, top_p_t, min_p_t = staged_f.to(self.device, non_blocking=True).split(bs)
            if gbs != bs:
                self.ms_temp[bs:gbs].fill_(0.0)  # padding rows: greedy, the cheapest
            self.ms_temp[:bs].copy_(temp_t)
            self.ms_top_p[:bs].copy_(top_p_t)
            self.ms_min_p[:bs].copy_(min_p_t)
            self.ms_top_k[:bs].copy_(extra_t[:bs])
            self.ms_seed[:bs].copy_(extra_t[bs:])
            graph = self.ms_sampled_graphs[gbs]
        if carry:  # before anything below overwrites ms_ids: the previous launch's last tokens are row k
            ids_t = torch.where(carry_t >= 0, self.ms_ids[k].index_select(0, carry_t.clamp(min=0)), ids_t)
        if gbs != bs:
            self.ms_pos[:, bs:gbs].fill_(0)
            self.ms_loc[:, bs:gbs].fill_(0)
            self.ms_seq[:, bs:gbs].fill_(1)
            self.req_pool_indices[bs:gbs].fill_(0)
        self.ms_ids[0, :bs].copy_(ids_t)
        self.req_pool_indices[:bs].copy_(rows_t)
        self.ms_pos[:, :bs].copy_(pos_t.view(k, bs))
        self.ms_loc[:, :bs].copy_(loc_t.view(k, bs))
        self.ms_seq[:, :bs].copy_(pos_t.view(k, bs) + 1)
        self.req_to_token[rows_t.repeat(k), pos_t] = loc_t.to(self.req_to_token.dtype)
        graph.replay()
        out = self.ms_host_out[flip][:k * bs].view(k, bs)  # contiguous: a strided host copy would sync
        out.copy_(self.ms_ids[1:, :bs], non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return MultiStepLaunch(out, done)

    def can_run(self, fb: ForwardBatch) -> bool:
        return fb.is_decode and fb.batch_size <= self.max_bs

    def replay(self, fb: ForwardBatch) -> torch.Tensor:
        bs = fb.batch_size
        gbs = self.batch_sizes[bisect.bisect_left(self.batch_sizes, bs)]
        if gbs != bs:  # padding rows: token 0 at position 0, written to the scratch slot, seeing one key
            for buf, fill in ((self.input_ids, 0), (self.positions, 0), (self.out_cache_loc, 0),
                              (self.req_pool_indices, 0), (self.seq_lens, 1)):
                buf[bs:gbs].fill_(fill)
        self.input_ids[:bs].copy_(fb.input_ids)
        self.positions[:bs].copy_(fb.positions)
        self.out_cache_loc[:bs].copy_(fb.out_cache_loc)
        self.req_pool_indices[:bs].copy_(fb.req_pool_indices)
        self.seq_lens[:bs].copy_(fb.seq_lens)
        self.graphs[gbs].replay()
        return self.outputs[gbs][:bs]
