"""The caller's side of one request: an async iterator of its outputs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from .request import RequestOutput
from .text_stream import TextStream


@dataclass
class StreamState:
    """What the engine loop keeps per live request: the queue it fills and the text state."""

    queue: asyncio.Queue[RequestOutput | BaseException] = field(default_factory=asyncio.Queue)
    text: TextStream | None = None
    done: bool = False              # the last output (or an error) has been queued


class RequestStream:
    """Outputs of one request, in order; the last has ``finished=True``.

    Returned by ``AsyncEngine.add_request``, which has already validated and
    queued the request. ``close()`` (or leaving ``async with``) aborts the
    request if it has not finished, freeing its KV blocks at once.
    """

    def __init__(self, request_id: str, state: StreamState,
                 on_close: Callable[[str, StreamState], None]) -> None:
        self.request_id = request_id
        self._state = state
        self._on_close = on_close
        self._closed = False
        self._finished = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._finished or self._closed:
            raise StopAsyncIteration
        item = await self._state.queue.get()
        if isinstance(item, BaseException):
            self._finished = True
            self.close()
            raise item
        if item.finished:
            self._finished = True
            self.close()
        return item

    def close(self) -> None:
        """Stops reading; an unfinished request is aborted (idempotent)."""
        if not self._closed:
            self._closed = True
            self._on_close(self.request_id, self._state)

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
