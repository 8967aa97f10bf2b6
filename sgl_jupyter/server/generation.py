"""Running engine work for one HTTP request: admission, client-disconnect abort, error mapping, SSE.

A request holds ``weight`` admission slots (its number of sequences) from the moment it is accepted
until its answer is sent or its client is gone; whatever happens, its engine requests are aborted
when the client disconnects, so their KV slots come back.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from .errors import APIError, from_engine_error, stream_error
from .state import ServerState

logger = logging.getLogger(__name__)

SSE_DONE = b"data: [DONE]\n\n"


def sse(obj: Any) -> bytes:
    """One Server-Sent Event carrying JSON (UTF-8, not ASCII-escaped: Chinese stays readable)."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


async def _wait_disconnect(request: Request) -> None:
    # The body has been read: the next ASGI message is the disconnect (or nothing, until we answer).
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: "asyncio.Future | Any") -> Any:
    """Await ``work`` unless the client disconnects first; then cancel it (the engine call aborts its
    requests on cancellation) and raise ``ClientGone``."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except BaseException:  # noqa: BLE001 - we only wanted it stopped
        pass
    raise ClientGone()


async def generate_once(state: ServerState, request: Request, weight: int, **kwargs: Any) -> Any:
    """A non-streaming engine call under admission, aborted if the client goes away."""
    state.admission.acquire(weight)
    try:
        return await until_disconnect(request, state.engine.async_generate(**kwargs))
    except ClientGone:
        rid = kwargs["rid"]
        for r in rid if isinstance(rid, list) else [rid]:
            state.engine.abort(r)
        raise APIError(499, "the client closed the connection; the request was aborted") from None
    except APIError:
        raise
    except Exception as e:  # noqa: BLE001 - engine errors become HTTP answers
        raise from_engine_error(e) from e
    finally:
        state.admission.release(weight)


class EngineStreams:
    """The engine streams of one HTTP request (one per choice), opened together, closed once."""

    def __init__(self, state: ServerState, weight: int):
        self.state, self.weight = state, weight
        self.rids: list[str] = []
        self.finished: set[str] = set()
        self.iterators: list[AsyncIterator[dict]] = []
        self._closed = False

    async def open(self, calls: list[dict]) -> "EngineStreams":
        """Start one engine stream per kwargs dict; on any error abort those already started."""
        self.state.admission.acquire(self.weight)
        try:
            for kw in calls:
                self.rids.append(kw["rid"])
                self.iterators.append(await self.state.engine.async_generate(stream=True, **kw))
        except BaseException as e:
            self.close()
            if isinstance(e, Exception):
                raise from_engine_error(e) from e
            raise
        return self

    def mark_finished(self, index: int) -> None:
        self.finished.add(self.rids[index])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for rid in self.rids:
            if rid not in self.finished:
                self.state.engine.abort(rid)
        self.state.admission.release(self.weight)

    async def chunks(self) -> AsyncIterator[tuple[int, dict]]:
        """``(choice index, engine chunk)`` in arrival order across all streams."""
        if len(self.iterators) == 1:
            async for chunk in self.iterators[0]:
                if chunk.get("finished"):
                    self.mark_finished(0)
                yield 0, chunk
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, it: AsyncIterator[dict]) -> None:
            try:
                async for chunk in it:
                    await queue.put((i, chunk))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                await queue.put((i, e))
            finally:
                await queue.put((i, None))

        tasks = [asyncio.ensure_future(pump(i, it)) for i, it in enumerate(self.iterators)]
        try:
            remaining = len(tasks)
            while remaining:
                i, item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    if item.get("finished"):
                        self.mark_finished(i)
                    yield i, item
        finally:
            for t in tasks:
                t.cancel()


async def guarded(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Report an error that happens after the stream has started as a final SSE error event."""
    try:
        async for event in events:
            yield event
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - the status line is already sent
        yield sse(stream_error(e))
        yield SSE_DONE


class SSEResponse(StreamingResponse):
    """A ``text/event-stream`` answer that runs ``on_close`` however it ends (done, error, or client
    disconnect, which Starlette turns into cancelling the body iterator)."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None], **kwargs: Any):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(guarded(content), headers=headers, **kwargs)
        self._on_close: Optional[Callable[[], None]] = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._on_close is not None:
                self._on_close()
                self._on_close = None
