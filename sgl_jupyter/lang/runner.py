"""Running programs: once (`run_program`), for a batch on a thread pool, and prefix caching by tracing."""
from __future__ import annotations

import contextvars
import multiprocessing
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable, Optional

from .interpreter import _POLL_S, StreamExecutor, _noted
from .ir import SglSamplingParams
from .program_state import ProgramState


def run_program(program: Any, backend: Any, func_args: tuple, func_kwargs: dict,
                default_sampling_para: SglSamplingParams, stream: bool, raise_errors: bool = True,
                on_start: Optional[Callable[[StreamExecutor], None]] = None) -> ProgramState:
    """Run `program` (an SglFunction) once. Non-streaming runs return after every step has run; an
    interrupt (Ctrl-C) or error aborts the program's requests in flight."""
    kwargs = {**program.bind_arguments, **func_kwargs}
    # The seed article calls `run(weather_agent, s="question")`: a value for the state parameter is the
    # text the program starts from (SGLang would raise "multiple values for argument 's'").
    initial = kwargs.pop(program.state_arg_name, None)
    exe = StreamExecutor(backend, kwargs, default_sampling_para, None, stream)
    state = ProgramState(exe)
    if on_start is not None:
        on_start(exe)
    backend.begin_program(exe)
    if stream:
        threading.Thread(target=contextvars.copy_context().run,
                         args=(_run_in_thread, state, program, func_args, kwargs, initial),
                         daemon=True, name="sgl-program-stream").start()
        return state
    try:
        if initial is not None:
            state += initial
        state.ret_value = program.func(state, *func_args, **kwargs)
        exe.end()
        exe.sync()
    except BaseException as e:
        exe._fail(e, None)  # first error wins: a failed step recorded earlier stays the reported one
        exe.abort()
        exe.end()
        if raise_errors or not isinstance(e, Exception):
            raise
    return state


def _run_in_thread(state: ProgramState, program: Any, args: tuple, kwargs: dict, initial: Any) -> None:
    exe = state.stream_executor
    try:
        if initial is not None:
            state += initial
        state.ret_value = program.func(state, *args, **kwargs)
    except BaseException as e:  # the reader sees it through text_iter / error()
        exe._fail(e, None)
        exe.abort()
    finally:
        exe.end()


def cache_program(program: Any, backend: Any) -> None:
    """Prefill the program's constant prefix (found by tracing) when it is long enough to matter."""
    from .tracer import extract_prefix_by_tracing

    prefix = extract_prefix_by_tracing(program, backend)
    if prefix and len(prefix) > 64:
        backend.cache_prefix(prefix)


class _Batch:
    """The executors of a running batch, so an interrupt can abort every program in it."""

    def __init__(self) -> None:
        self.executors: list[StreamExecutor] = []
        self.cancelled = False
        self._lock = threading.Lock()

    def started(self, exe: StreamExecutor) -> None:
        with self._lock:
            self.executors.append(exe)
            cancelled = self.cancelled
        if cancelled:
            exe.abort()

    def abort_all(self) -> None:
        with self._lock:
            self.cancelled = True
            executors = list(self.executors)
        for exe in executors:
            exe.abort()


def _result(future: Future) -> Any:
    """future.result() in short waits, so Ctrl-C reaches a main thread waiting here."""
    while True:
        try:
            return future.result(timeout=_POLL_S)
        except FutureTimeout:
            continue


def run_program_batch(program: Any, backend: Any, batch_arguments: list[dict],
                      default_sampling_para: SglSamplingParams, num_threads: Any, progress_bar: bool,
                      generator_style: bool = False):
    """Run the program for each argument dict on a thread pool; raises the first failure (after all ran),
    with every state attached as `error.states`."""
    if len(batch_arguments) > 1:
        cache_program(program, backend)
    if num_threads == "auto":
        num_threads = max(96, (multiprocessing.cpu_count() or 1) * 16)
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be 'auto' or an integer >= 1, got {num_threads!r}")
    num_threads = min(num_threads, len(batch_arguments))
    batch = _Batch()

    def one(arguments: dict) -> ProgramState:
        return run_program(program, backend, (), arguments, default_sampling_para, False, raise_errors=False,
                           on_start=batch.started)

    if generator_style:
        return _batch_generator(one, batch, batch_arguments, num_threads, progress_bar)
    pbar = _progress(len(batch_arguments)) if progress_bar else None
    pool = ThreadPoolExecutor(num_threads, thread_name_prefix="sgl-batch")
    try:
        futures = [pool.submit(one, a) for a in batch_arguments]
        if pbar is not None:
            for f in futures:
                f.add_done_callback(lambda _: pbar.update())
        states = [_result(f) for f in futures]
    except BaseException:
        batch.abort_all()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        if pbar is not None:
            pbar.close()
    pool.shutdown()
    for i, state in enumerate(states):
        error = state.stream_executor.error_
        if error is not None:
            error.states = states  # type: ignore[attr-defined]
            if hasattr(error, "add_note"):
                error.add_note(f"in run_batch item {i}: {batch_arguments[i]!r}")
            raise _noted(error, state.stream_executor.error_site)
    return states


def _batch_generator(one: Callable, batch: _Batch, batch_arguments: list[dict], num_threads: int,
                     progress_bar: bool):
    pbar = _progress(len(batch_arguments)) if progress_bar else None
    chunk = 200  # submit in chunks so results can be yielded before the whole batch is queued
    pool = ThreadPoolExecutor(num_threads, thread_name_prefix="sgl-batch")
    try:
        for start in range(0, len(batch_arguments), chunk):
            futures = [pool.submit(one, a) for a in batch_arguments[start:start + chunk]]
            for f in futures:
                state = _result(f)
                if pbar is not None:
                    pbar.update()
                state.stream_executor.raise_error()
                yield state
    except BaseException:  # includes the consumer closing the generator early
        batch.abort_all()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        if pbar is not None:
            pbar.close()
    pool.shutdown()


def _progress(total: int):
    import tqdm

    return tqdm.tqdm(total=total)
