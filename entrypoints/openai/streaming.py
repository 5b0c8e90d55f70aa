"""Server-Sent Events, and noticing that the client went away.

A client that disconnects must not keep its requests running: the handler's
work is raced against the ASGI ``http.disconnect`` message and cancelled when
it arrives, and the owner's ``on_close`` aborts whatever is unfinished (which
frees the KV blocks at once). This is done here rather than relying on a
failed write, because a stream may be silent for a while (held-back text).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
Emit = Callable[[bytes], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
               (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
DONE = b"data: [DONE]\n\n"


def sse_event(json_bytes: bytes) -> bytes:
    return b"data: " + json_bytes + b"\n\n"


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def run_until_disconnect(receive: Receive, work: Awaitable[T]) -> tuple[bool, T | None]:
    """``(True, result)`` when ``work`` finishes; ``(False, None)`` if the client left first
    (then ``work`` has been cancelled). Both tasks are owned here: neither outlives the call."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        await asyncio.wait((work_task, watch_task), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work_task, watch_task):
            task.cancel()
        await asyncio.wait((work_task, watch_task))
    if not work_task.done() or work_task.cancelled():
        return False, None
    return True, work_task.result()


class EventStreamResponse:
    """An ASGI SSE response: ``produce(emit)`` writes events; ``on_close()`` always runs last.

    Status and headers go out first (errors that must be a status code are
    raised before this response is made). The producer runs until it returns
    or the client disconnects.
    """

    def __init__(self, produce: Callable[[Emit], Awaitable[None]],
                 on_close: Callable[[], None]) -> None:
        self.produce = produce
        self.on_close = on_close

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})

            async def emit(data: bytes) -> None:
                await send({"type": "http.response.body", "body": data, "more_body": True})

            completed, _ = await run_until_disconnect(receive, self.produce(emit))
            if completed:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:          # the connection broke while writing: same as a disconnect
            pass
        finally:
            self.on_close()
