"""Server-Sent Events, and noticing that the client went away or the server is stopping.

A client that disconnects must not keep its requests running: the handler's
work is raced against the ASGI ``http.disconnect`` message and cancelled when
it arrives, and the owner's ``on_close`` aborts whatever is unfinished (which
frees the KV blocks at once). This is done here rather than relying on a
failed write, because a stream may be silent for a while (held-back text).
The work is raced against the server's shutdown event too, so Ctrl-C ends
open streams at once, each with an error event and ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
Emit = Callable[[bytes], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
               (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
DONE = b"data: [DONE]\n\n"
SHUTDOWN_ERROR = (b'{"error": {"message": "the server is shutting down", '
                  b'"type": "service_unavailable", "param": null, "code": "shutting_down"}}')


def sse_event(json_bytes: bytes) -> bytes:
    return b"data: " + json_bytes + b"\n\n"


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Outcome(enum.Enum):
    DONE = "done"                    # the work finished (its result or error is returned)
    DISCONNECTED = "disconnected"    # the client left; the work was cancelled
    SHUTDOWN = "shutdown"            # the server is stopping; the work was cancelled


async def race_client(receive: Receive, work: Awaitable[T], shutdown: asyncio.Event,
                      ) -> tuple[Outcome, T | None]:
    """Runs ``work`` until it finishes, the client disconnects or the server shuts down.

    The three tasks are owned here: none outlives the call.
    """
    work_task = asyncio.ensure_future(work)
    watchers = {asyncio.ensure_future(_wait_for_disconnect(receive)): Outcome.DISCONNECTED,
                asyncio.ensure_future(shutdown.wait()): Outcome.SHUTDOWN}
    tasks = (work_task, *watchers)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
    if work_task.done() and not work_task.cancelled():
        return Outcome.DONE, work_task.result()       # re-raises the work's error
    for watcher, outcome in watchers.items():
        if watcher.done() and not watcher.cancelled():
            return outcome, None
    return Outcome.DISCONNECTED, None


class EventStreamResponse:
    """An ASGI SSE response: ``produce(emit)`` writes events; ``on_close()`` always runs last.

    Status and headers go out first (errors that must be a status code are
    raised before this response is made). The producer runs until it returns
    or the client disconnects.
    """

    def __init__(self, produce: Callable[[Emit], Awaitable[None]],
                 on_close: Callable[[], None], shutdown: asyncio.Event) -> None:
        self.produce = produce
        self.on_close = on_close
        self.shutdown = shutdown

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})

            async def emit(data: bytes) -> None:
                await send({"type": "http.response.body", "body": data, "more_body": True})

            outcome, _ = await race_client(receive, self.produce(emit), self.shutdown)
            if outcome is Outcome.SHUTDOWN:
                await emit(sse_event(SHUTDOWN_ERROR) + DONE)
            if outcome is not Outcome.DISCONNECTED:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:          # the connection broke while writing: same as a disconnect
            pass
        finally:
            self.on_close()
