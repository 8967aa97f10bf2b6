"""Rank 0 of tensor parallelism: starts the worker processes, forms the groups with them, sends
each batch before running its own shard, and watches them.

Failure contract: a worker that dies (or a step that fails half-way, leaving the ranks out of
step) makes ``failed`` a ``TPWorkerError`` naming the rank and how it died; every later step
raises it, the engine stops, and the remaining workers are terminated. Workers exit on their own
when this process goes away. Nothing waits forever: startup polls each worker's liveness, the
model's collectives have a timeout, and on CUDA a dead rank's communicator is aborted."""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from typing import Callable, Optional

import torch
import torch.distributed as dist

from ..config import EngineArgs
from ..errors import EngineDeadError, EngineError, ModelLoadError
from ..forward_batch import ForwardBatch
from ..loader import check_model_dir, load_hf_config
from .batch_comm import TrackedReqToTokenPool, send_batch, send_stop
from .parallel_state import (TPGroup, abort_device_group, check_tp_size, destroy_process_groups,
                             init_process_groups)
from .worker import worker_main

logger = logging.getLogger(__name__)

_WATCH_S = 0.2


class TPWorkerError(EngineDeadError):
    """A tensor-parallel worker died or the ranks fell out of step; the engine cannot continue."""


class TPCoordinator:
    """Spawns ranks 1..N-1 at construction (they load their shards while rank 0 loads its own)."""

    def __init__(self, args: EngineArgs, device: torch.device):
        self.size = args.tp_size
        self.device = device
        # a clear error before any process starts: tp_size must fit the model's heads
        check_tp_size(load_hf_config(check_model_dir(args.model_path, args.load_format), args.trust_remote_code),
                      self.size)
        if dist.is_initialized():
            raise EngineError("a tensor-parallel engine is already running in this process: shut it down "
                              "(%sgl_unload / engine.shutdown()) before starting another")
        if device.type == "cuda":
            base = device.index if device.index is not None else torch.cuda.current_device()
            if base + self.size > torch.cuda.device_count():
                raise ModelLoadError(f"tp_size={self.size} needs {self.size} GPUs from cuda:{base}, but this host "
                                     f"has {torch.cuda.device_count()}: lower --tp-size")
            self.device = torch.device("cuda", base)
        self.group = TPGroup(0, self.size)
        self.table: Optional[TrackedReqToTokenPool] = None  # rank 0's request table, set by the engine
        self.failed: Optional[TPWorkerError] = None
        self._closed = False
        self._stopping = threading.Event()
        self._conn_lock = threading.Lock()  # the watchdog and the scheduler thread both read the pipes
        self._store = dist.TCPStore("127.0.0.1", 0, self.size, is_master=True, wait_for_workers=False)
        ctx = mp.get_context("spawn")  # fork would copy the kernel's threads and CUDA state
        self.workers: list[tuple[mp.Process, object]] = []
        for rank in range(1, self.size):
            worker_args = args.to_dict()
            worker_args["device"] = f"cuda:{self.device.index + rank}" if device.type == "cuda" else "cpu"
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=worker_main, name=f"sgl-jupyter-tp-rank{rank}", daemon=True,
                               args=(rank, self.size, worker_args, self._store.port, theirs, os.getpid()))
            proc.start()
            theirs.close()
            self.workers.append((proc, ours))

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self.workers]

    # ------------------------------------------------------------------ startup
    def connect(self, kv_size: int, attention_backend: str) -> int:
        """Wait for every worker's shard, agree on the KV pool size (the smallest rank's), send the plan
        and form the process groups. Returns the agreed size."""
        sizes = [kv_size] + [self._expect(rank, "loaded") for rank in range(1, self.size)]
        agreed = min(sizes)
        for _, conn in self.workers:
            conn.send(("plan", agreed, attention_backend))
        if self.device.type == "cuda":  # a timed-out NCCL collective raises here instead of killing the kernel
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
        init_process_groups(self.group, self._store, self.device)
        threading.Thread(target=self._watch, name="sgl-jupyter-tp-watchdog", daemon=True).start()
        return agreed

    def _expect(self, rank: int, tag: str):
        proc, conn = self.workers[rank - 1]
        while True:
            if conn.poll(_WATCH_S):
                try:
                    msg = conn.recv()
                except EOFError:
                    msg = ("error", None)
                if msg[0] == tag:
                    return msg[1]
                detail = (msg[1] or "it exited before reporting") if msg[0] == "error" else f"unexpected {msg[0]!r}"
                proc.join(timeout=5)
                raise ModelLoadError(f"tensor-parallel worker rank {rank} failed to start "
                                     f"({_how(proc.exitcode)}):\n{detail}")
            if not proc.is_alive():
                raise ModelLoadError(f"tensor-parallel worker rank {rank} exited during start-up "
                                     f"({_how(proc.exitcode)})")

    # ------------------------------------------------------------------ steps
    def forward(self, fb: ForwardBatch, run_local: Callable[[ForwardBatch], torch.Tensor]) -> torch.Tensor:
        """Send the batch, run rank 0's shard (its collectives meet the workers'), return full logits."""
        if self.failed is not None:
            raise self.failed
        try:
            send_batch(self.group, fb, self.table)
            logits = run_local(fb)
            if logits.is_cuda:  # an aborted collective leaves garbage: look before anyone samples from it
                torch.cuda.current_stream(logits.device).synchronize()
        except Exception as e:  # noqa: BLE001 - the ranks are out of step now, whatever the cause
            self._fail(self._dead_worker(wait_s=2.0) or f"a tensor-parallel step failed on rank 0: {e!r}")
            raise self.failed from e
        if self.failed is not None:
            raise self.failed
        return logits

    # ------------------------------------------------------------------ failure and shutdown
    def _dead_worker(self, wait_s: float = 0.0) -> Optional[str]:
        deadline = time.monotonic() + wait_s
        while True:
            for rank, (proc, conn) in enumerate(self.workers, 1):
                if proc.exitcode is not None:
                    with self._conn_lock:
                        last = _last_error(conn)
                    return f"tensor-parallel worker rank {rank} (pid {proc.pid}) died ({_how(proc.exitcode)}){last}"
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def _watch(self) -> None:
        while not self._stopping.wait(_WATCH_S):
            reason = self._dead_worker()
            if reason is not None and not self._stopping.is_set():
                self._fail(reason)
                return

    def _fail(self, reason: str) -> None:
        if self.failed is not None:
            return
        self.failed = TPWorkerError(f"{reason}; the engine has stopped: load the model again "
                                    "(%sgl_load, or a new Engine)")
        logger.error("%s", self.failed)
        if self.device.type == "cuda":
            abort_device_group(self.group)

    def shutdown(self, clean: bool = True) -> None:
        """Stop the workers: a stop message when the ranks are in step and nothing else is using the
        group (``clean``), else (or if they linger) terminate, then kill. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        if clean and self.failed is None and self.group.control_group is not None:
            try:
                send_stop(self.group)
            except Exception:  # noqa: BLE001 - a worker is already gone: terminate below
                pass
        deadline = time.monotonic() + (10.0 if clean else 0.5)
        for proc, _ in self.workers:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
        for proc, _ in self.workers:
            if proc.is_alive():
                proc.terminate()
        for proc, _ in self.workers:
            proc.join(timeout=3)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=3)
        with self._conn_lock:
            for _, conn in self.workers:
                conn.close()
        destroy_process_groups(self.group)
        self._store = None


def _how(exitcode: Optional[int]) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _last_error(conn) -> str:
    """The traceback a worker sent before exiting, if any (its last line)."""
    try:
        while conn.poll(0):
            msg = conn.recv()
            if msg[0] == "error" and msg[1]:
                return f": {msg[1].strip().splitlines()[-1]}"
    except (EOFError, OSError):
        pass
    return ""
