"""Engine: the public face of the inference engine. One scheduler thread owns the device; any
number of caller threads (notebook cells, HTTP handlers, widgets) submit requests and wait on
their own queues."""
from __future__ import annotations

import asyncio
import atexit
import gc
import weakref
import itertools
import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, AsyncIterator, Callable, Iterator, Optional, Union

import torch

from .attention import choose_backend_name
from .config import EngineArgs
from .detokenizer import IncrementalDetokenizer
from .errors import EngineDeadError, EngineError, EngineOverloadedError, InvalidRequestError
from .events import EventBus
from .kv_pool import ReqToTokenPool
from .loader import LoadedModel, load_model, resolve_device
from .output import OutputBuilder
from .prefix_cache import make_prefix_cache
from .rank_setup import build_rank, kv_capacity
from .request import Req
from .request_factory import InputIds, Prompt, RequestFactory
from .scheduler import Scheduler, SchedulerLimits
from .server_info import server_info
from .timeline import EngineTimeline

logger = logging.getLogger(__name__)


# on CUDA a running stream waits at most this long for its next decode step while prefills are admitted
# (issue 17: a burst of admissions stalled streams 3.6 s); one 8192-token prefill chunk fits well inside it
DECODE_GAP_S = 0.1
_POLL_S = 0.05  # caller-side wait granularity: lets Ctrl-C reach a notebook cell promptly


class Engine:
    """In-process LLM engine.

    >>> eng = Engine()                                   # the embedded SmolLM2 model on CPU
    >>> eng.generate("The capital of France is", {"max_new_tokens": 8, "temperature": 0})["text"]
    """

    def __init__(self, model_path: Optional[str] = None, **kwargs: Any):
        self.args = EngineArgs.from_kwargs(model_path=model_path, **kwargs)
        _configure_logging(self.args.log_level)
        if self.args.model_path is None:
            from .default_model import default_model_path

            self.args.model_path = default_model_path()
        t0 = time.perf_counter()
        self.tp = None  # tensor parallel (tp_size > 1): the coordinator of the worker processes
        if self.args.tp_size > 1:
            from .distributed.coordinator import TPCoordinator

            self.tp = TPCoordinator(self.args, resolve_device(self.args.device))  # workers load meanwhile
        try:
            self._start(t0)
        except BaseException:
            if self.tp is not None:
                self.tp.shutdown(clean=False)
            raise

    def _start(self, t0: float) -> None:
        self.loaded: LoadedModel = load_model(
            self.args.model_path, load_format=self.args.load_format, dtype=self.args.dtype, device=self.args.device,
            tokenizer_path=self.args.tokenizer_path, trust_remote_code=self.args.trust_remote_code,
            seed=self.args.random_seed, tp=self.tp.group if self.tp is not None else None,
            quantization=self.args.quantization)
        self.tokenizer = self.loaded.tokenizer
        self.hf_config = self.loaded.hf_config
        self.device = self.loaded.device
        self.vocab_size = int(self.hf_config.vocab_size)
        self.eos_ids = _eos_ids(self.hf_config, self.tokenizer)
        self.attention_backend = choose_backend_name(self.args.attention_backend, self.device,
                                                     self.args.disable_flashinfer, self.loaded.dtype,
                                                     kv_fp8=self.args.kv_cache_dtype != "auto")
        kv_size = kv_capacity(self.args, self.loaded, self.args.tp_size)
        req_pool_cls = ReqToTokenPool
        if self.tp is not None:
            from .distributed.batch_comm import TrackedReqToTokenPool

            kv_size = self.tp.connect(kv_size, self.attention_backend)  # the workers build the same below
            req_pool_cls = TrackedReqToTokenPool
        rank = build_rank(self.args, self.loaded, kv_size, self.attention_backend, self.args.tp_size, req_pool_cls)
        self.kv_pool, self.req_pool, self.runner = rank.kv_pool, rank.req_pool, rank.runner
        self.max_context, self.max_running, self._attn_dims = rank.max_context, rank.max_running, rank.attn_dims
        if self.tp is not None:
            self.tp.table = self.req_pool
            self.runner.tp_coordinator = self.tp
        self.bus = EventBus()
        self.detokenizer = IncrementalDetokenizer(self.tokenizer)
        self.cache = make_prefix_cache(self.args.disable_radix_cache, self.kv_pool.free,
                                       decode=lambda ids: self.tokenizer.decode(ids))
        generator = torch.Generator(device=self.device).manual_seed(self.args.random_seed)
        self.scheduler = Scheduler(self.runner, self.kv_pool, self.req_pool, self.cache, self.detokenizer,
                                   self.eos_ids, SchedulerLimits(
                                       max_running=self.max_running, max_context=self.max_context,
                                       chunked_prefill_size=self.args.prefill_chunk(self.device.type),
                                       max_prefill_tokens=self.args.max_prefill_tokens,
                                       schedule_policy=self.args.schedule_policy,
                                       max_decode_gap_s=DECODE_GAP_S if self.device.type == "cuda" else 0.0),
                                   self.bus, OutputBuilder(self.tokenizer), generator)
        self.scheduler.enable_jump_forward = not self.args.disable_regex_jump_forward
        self.timeline = self.scheduler.timeline = EngineTimeline()  # step history since load (%sgl_stats)
        self.scheduler.continuous_decode_steps = self.runner.continuous_decode_steps
        self.requests = RequestFactory(self.tokenizer, self.vocab_size, self.max_context, self.device, self.eos_ids,
                                       self.detokenizer, self.args.random_seed)
        self._inbox: queue.Queue = queue.Queue()
        self._live: dict[str, Req] = {}
        self._ids = itertools.count()
        self._closed = False
        self._error: Optional[BaseException] = None
        self.load_time_s = time.perf_counter() - t0
        # The model's, tokenizer's and graphs' Python objects go out of the collector's sight: a full
        # collection that walks them stalls a large decode batch for tens of milliseconds (SGLang freezes
        # after warm-up too). shutdown() hands them back.
        gc.collect()
        gc.freeze()
        self._thread = threading.Thread(target=self._loop, name="sgl-jupyter-scheduler", daemon=True)
        self._thread.start()
        _LIVE_ENGINES.add(self)
        logger.info("engine ready: %s on %s (%s), KV capacity %d tokens, attention=%s, load %.1fs",
                    self.args.model_path, self.device, self.loaded.dtype, self.kv_pool.size,
                    self.attention_backend, self.load_time_s)

    # ------------------------------------------------------------------ scheduler thread
    def _loop(self) -> None:
        sched = self.scheduler
        while not self._closed:
            if self.tp is not None and self.tp.failed is not None:
                self._stop_after_tp_failure(self.tp.failed)
                break
            try:
                self._drain_inbox(block=not sched.has_work)
                if sched.has_work:
                    with torch.inference_mode():
                        sched.step()
            except Exception as e:  # noqa: BLE001 - the engine must survive; fail the requests in flight
                if not isinstance(e, EngineDeadError):  # (a dead TP worker was logged where it was found)
                    logger.exception("engine step failed; aborting the requests in flight and resetting the KV cache")
                self._recover(e)
        sched.abort_all("the engine was shut down")

    def _stop_after_tp_failure(self, error: Exception) -> None:
        """A tensor-parallel rank died or fell out of step: fail every request, stop the workers, stop."""
        self._error = error
        self._closed = True
        self._recover(error)
        self.tp.shutdown(clean=False)

    def _track(self, req: Req) -> None:
        """Remember a request until its final chunk, so a failed step can answer every caller."""
        self._live[req.rid] = req
        sink = req.sink

        def tracked(chunk: dict) -> None:
            if chunk.get("finished"):
                self._live.pop(req.rid, None)
            sink(chunk)

        req.sink = tracked

    def _recover(self, error: Exception) -> None:
        sched = self.scheduler
        reqs = list(self._live.values())
        self._live.clear()
        sched.discard_in_flight()
        sched.waiting.clear()
        sched.running.clear()
        sched.chunked = None
        if isinstance(error, EngineDeadError):
            message = str(error)
        elif isinstance(error, torch.OutOfMemoryError):
            message = ("out of GPU memory in a forward step (the requests in flight were aborted; the engine goes "
                       "on): restart with a lower --mem-fraction-static (now "
                       f"{self.args.gpu_mem_fraction()}) to leave activations more room, or lower "
                       "--chunked-prefill-size / --max-running-requests")
        else:
            message = f"internal engine error: {error!r}"
        for req in reqs:
            req.finish_reason = {"type": "abort", "message": message}
            try:
                req.sink({"error": message, "finished": True})
            except Exception:  # noqa: BLE001
                pass
        self.cache.reset()
        self.kv_pool.reset()
        self.req_pool.__init__(self.req_pool.max_reqs, self.req_pool.max_context, self.device)

    def _drain_inbox(self, block: bool) -> None:
        try:
            msg = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(msg)
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "add":
            for req in msg[1]:
                self._track(req)
                self.scheduler.add(req)
        elif kind == "abort":
            rid = msg[1]
            for req in self._find(rid):
                self.scheduler.abort(req.rid)
        elif kind == "call":
            fn, fut = msg[1], msg[2]
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001
                fut.set_exception(e)
        elif kind == "stop":
            self._closed = True

    def _find(self, rid: str) -> list[Req]:
        s = self.scheduler
        reqs = list(s.waiting) + list(s.running) + ([s.chunked] if s.chunked else [])
        return [r for r in reqs if r.rid == rid or r.rid.startswith(rid + "#")]

    def _call(self, fn: Callable[[], Any], timeout: Optional[float] = None) -> Any:
        """Run ``fn`` on the scheduler thread between two steps and return its result."""
        self._check_alive()
        fut: Future = Future()
        self._inbox.put(("call", fn, fut))
        return fut.result(timeout)

    def _check_alive(self) -> None:
        if self._closed or not self._thread.is_alive():
            raise self._dead_error()

    def _dead_error(self) -> EngineDeadError:
        if self._error is not None:
            return EngineDeadError(str(self._error))
        if self._closed:
            return EngineDeadError("the engine has been shut down; create a new Engine (or %sgl_load again)")
        return EngineDeadError("the engine's scheduler thread has stopped")

    def _submit(self, reqs: list[Req]) -> None:
        self._check_alive()
        limit = self.args.max_queued_requests
        if limit is not None and self.scheduler.num_queued + self._inbox.qsize() + len(reqs) > limit:
            raise EngineOverloadedError(
                f"the engine's queue is full ({limit} waiting requests): retry later or raise --max-queued-requests")
        self._inbox.put(("add", reqs))

    @property
    def _grammar_backend(self):
        """The grammar backend once a constrained request has been made (tests inspect its cache)."""
        return self.requests.grammar_backend

    # ------------------------------------------------------------------ public API
    def generate(self, prompt: Prompt = None, sampling_params: Union[dict, list, None] = None,
                 input_ids: InputIds = None, *, return_logprob: Union[bool, list] = False,
                 logprob_start_len: Union[int, list] = -1, top_logprobs_num: Union[int, list] = 0,
                 return_text_in_logprobs: bool = False, stream: bool = False, rid: Optional[str] = None):
        """Generate for one prompt (-> dict), a list (-> list of dicts, in order; n>1 expands each), or
        stream one prompt (-> iterator of chunks with ``text`` so far and ``delta``)."""
        ids_list, params, single = self.requests.normalize(prompt, input_ids, sampling_params, stream)
        queues: list[queue.Queue] = []

        def sink_factory():
            q: queue.Queue = queue.Queue()
            queues.append(q)
            return q.put

        reqs = self.requests.make_reqs(ids_list, params, rid, stream, sink_factory, return_logprob, logprob_start_len,
                               top_logprobs_num, return_text_in_logprobs)
        if stream:
            self._submit(reqs)
            return self._stream(reqs[0], queues[0])
        self._submit(reqs)
        results = []
        try:
            for q in queues:
                results.append(self._wait_final(q))
        except BaseException:
            for r in reqs:
                self.abort(r.rid)
            raise
        return results[0] if single and len(results) == 1 else results

    def _get(self, q: queue.Queue) -> dict:
        while True:
            try:
                chunk = q.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive():
                    raise self._dead_error()
                continue
            if "error" in chunk:
                raise EngineError(chunk["error"])
            return chunk

    def _wait_final(self, q: queue.Queue) -> dict:
        while True:
            chunk = self._get(q)
            if chunk["finished"]:
                return _final(chunk)

    def _stream(self, req: Req, q: queue.Queue) -> Iterator[dict]:
        try:
            while True:
                chunk = self._get(q)
                while not chunk["finished"] and not q.empty():  # the reader fell behind: one chunk for all
                    chunk = _coalesce(chunk, q.get_nowait())
                yield chunk
                if chunk["finished"]:
                    return
        finally:
            if not req.finished:
                self.abort(req.rid)

    async def async_generate(self, prompt: Prompt = None, sampling_params: Union[dict, list, None] = None,
                             input_ids: InputIds = None, *, return_logprob: Union[bool, list] = False,
                             logprob_start_len: Union[int, list] = -1, top_logprobs_num: Union[int, list] = 0,
                             return_text_in_logprobs: bool = False, stream: bool = False,
                             rid: Optional[str] = None):
        """Like ``generate`` for asyncio callers; with ``stream=True`` returns an async iterator."""
        loop = asyncio.get_running_loop()
        ids_list, params, single = await loop.run_in_executor(None, self.requests.normalize, prompt, input_ids,
                                                              sampling_params, stream)
        aqs: list[asyncio.Queue] = []

        def sink_factory():
            aq: asyncio.Queue = asyncio.Queue()
            aqs.append(aq)
            return lambda chunk: loop.call_soon_threadsafe(aq.put_nowait, chunk)

        reqs = await loop.run_in_executor(None, self.requests.make_reqs, ids_list, params, rid, stream, sink_factory,
                                          return_logprob, logprob_start_len, top_logprobs_num,
                                          return_text_in_logprobs)
        self._submit(reqs)
        if stream:
            return self._astream(reqs[0], aqs[0])
        try:
            results = [await self._await_final(aq) for aq in aqs]
        except BaseException:
            for r in reqs:
                self.abort(r.rid)
            raise
        return results[0] if single and len(results) == 1 else results

    async def _aget(self, aq: asyncio.Queue) -> dict:
        while True:
            try:
                chunk = await asyncio.wait_for(aq.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if not self._thread.is_alive():
                    raise self._dead_error()
                continue
            if "error" in chunk:
                raise EngineError(chunk["error"])
            return chunk

    async def _await_final(self, aq: asyncio.Queue) -> dict:
        while True:
            chunk = await self._aget(aq)
            if chunk["finished"]:
                return _final(chunk)

    async def _astream(self, req: Req, aq: asyncio.Queue) -> AsyncIterator[dict]:
        try:
            while True:
                chunk = await self._aget(aq)
                while not chunk["finished"] and not aq.empty():  # the reader fell behind: one chunk for all
                    chunk = _coalesce(chunk, aq.get_nowait())
                yield chunk
                if chunk["finished"]:
                    return
        finally:
            if not req.finished:
                self.abort(req.rid)

    def abort(self, rid: str) -> None:
        """Abort a request (and, for n>1 or batches, all its parts) wherever it is."""
        if not isinstance(rid, str):
            raise InvalidRequestError(f"rid must be a string, got {type(rid).__name__}")
        if not self._closed:
            self._inbox.put(("abort", rid))

    def flush_cache(self) -> bool:
        """Drop the whole prefix cache; refused (False) while requests are in flight."""
        def flush() -> bool:
            if self.scheduler.has_work:
                return False
            self.cache.reset()
            self.kv_pool.reset()
            return True

        return self._call(flush)

    def cache_snapshot(self, max_nodes: int = 500) -> dict:
        """The radix tree as plain data (see docs/architecture.md), read between two steps."""
        return self._call(lambda: self.cache.snapshot(max_nodes))

    def subscribe(self, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Observe engine events; returns the function that unsubscribes. Runs on the scheduler thread."""
        return self.bus.subscribe(callback)

    def get_server_info(self) -> dict:
        """Model, memory, cache and counters as SGLang's ``/get_server_info`` reports them."""
        return server_info(self)

    def shutdown(self) -> None:
        if self._closed:
            return
        self._inbox.put(("stop",))
        self._thread.join(timeout=30)
        self._closed = True
        if self.tp is not None:  # a stop message only if the scheduler thread is not inside a step
            self.tp.shutdown(clean=not self._thread.is_alive())
        gc.unfreeze()  # before the collection below, so cyclic garbage among them can go
        if self.device.type == "cuda" and not self._thread.is_alive():
            self._release_gpu_memory()

    def _release_gpu_memory(self) -> None:
        """Give the GPU back at shutdown (``%sgl_unload``, a benchmark's next engine): graphs, KV, weights."""
        self.runner.graphs = None
        self.kv_pool.k_buffers.clear()
        self.kv_pool.v_buffers.clear()
        self.loaded.model.to("meta")
        gc.collect()
        torch.cuda.empty_cache()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"Engine(model_path={self.args.model_path!r}, device={self.device}, kv_tokens={self.kv_pool.size})"


_LIVE_ENGINES: "weakref.WeakSet[Engine]" = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    """Stop scheduler threads before the interpreter tears torch down under them."""
    for eng in list(_LIVE_ENGINES):
        try:
            eng.shutdown()
        except Exception:  # noqa: BLE001
            pass


def _coalesce(chunk: dict, later: dict) -> dict:
    """Two stream chunks of one request as one: text, output ids and meta_info are cumulative (the later
    chunk's), deltas are joined. A stream reader that falls behind (a slow HTTP client, a busy event loop)
    then sends one event for what queued up instead of one per step, and catches up."""
    if "error" in later:
        raise EngineError(later["error"])
    return {**later, "delta": chunk["delta"] + later["delta"]}


def _final(chunk: dict) -> dict:
    return {"text": chunk["text"], "output_ids": chunk["output_ids"], "meta_info": chunk["meta_info"]}


def _eos_ids(cfg, tokenizer) -> set[int]:
    ids: set[int] = set()
    eos = getattr(cfg, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(x) for x in eos)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _configure_logging(level: str) -> None:
    logging.getLogger("sgl_jupyter").setLevel(level.upper())
