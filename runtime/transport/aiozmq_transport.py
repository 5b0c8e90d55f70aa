"""Transport over aiozmq streams (the default where aiozmq imports: Python ≤ 3.13)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import aiozmq
import zmq

from actorexec.protocol.codec import Frame

from .base import Transport, TransportClosed
from .peer_outbox import PeerOutbox


class AiozmqTransport(Transport):
    """An aiozmq stream. DEALER writes are buffered in order by aiozmq when the socket is
    full; ROUTER replies go through per-peer queues (:class:`PeerOutbox`)."""

    def __init__(self, stream: aiozmq.ZmqStream, endpoint: str, router: bool) -> None:
        self.endpoint = endpoint
        self._stream = stream
        self._router = router
        self._sock: zmq.Socket = stream.transport.get_extra_info("zmq_socket")
        self._closed = False
        self._recheck_pending = False
        self._peers = PeerOutbox(self._try_send, endpoint)

    @classmethod
    async def create(cls, kind: str, endpoint: str, bind: bool,
                     options: Mapping[int, int] | None = None) -> AiozmqTransport:
        where = {"bind": endpoint} if bind else {"connect": endpoint}
        if options:  # set before connecting, so that they apply to the connection
            where = {}
        # A large read high-water mark: reading pauses only under real backlog.
        stream = await aiozmq.create_zmq_stream(getattr(zmq, kind), high_read=1 << 30, **where)
        stream.transport.setsockopt(zmq.LINGER, 0)
        if kind == "ROUTER":
            stream.transport.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if options:
            for option, value in options.items():
                stream.transport.setsockopt(option, value)
            await (stream.transport.bind(endpoint) if bind else stream.transport.connect(endpoint))
        return cls(stream, endpoint, router=kind == "ROUTER")

    def send(self, frames: Sequence[Frame]) -> None:
        if self._closed:
            raise TransportClosed(f"transport {self.endpoint} is closed")
        self._stream.write(list(frames))

    def send_to(self, identity: bytes, frames: Sequence[Frame]) -> None:
        if self._closed:
            raise TransportClosed(f"transport {self.endpoint} is closed")
        self._peers.send_to(identity, list(frames))

    def _try_send(self, message: list[Frame]) -> None:
        """One non-blocking send on the raw socket, never through aiozmq's write buffer.

        aiozmq's buffer is one queue for every peer, and aiozmq treats EHOSTUNREACH
        (a peer that left before its reply) as fatal and closes the socket.
        """
        try:
            self._sock.send_multipart(message, zmq.DONTWAIT, copy=False)
        finally:
            self._recheck_events()

    def _recheck_events(self) -> None:
        """Has aiozmq look at the socket's events again after a send made outside it.

        A ZeroMQ socket's FD is edge-triggered: any operation on the socket may
        consume the edge that announces newly arrived messages. aiozmq re-checks
        only after its own reads and writes, so without this an actor could stop
        reading with calls waiting in its socket (seen: a worker going silent after
        ~1,200 steps under 50 in flight). ``_read_ready`` is aiozmq 1.0's own handler
        for the FD; aiozmq is pinned and unmaintained, so the name cannot move.
        """
        if self._recheck_pending:
            return
        handler = getattr(self._stream.transport, "_read_ready", None)
        if handler is None:
            return
        self._recheck_pending = True

        def recheck() -> None:
            self._recheck_pending = False
            if not self._closed:
                handler()

        asyncio.get_running_loop().call_soon(recheck)

    async def recv(self) -> list[bytes]:
        try:
            return await self._stream.read()
        except aiozmq.ZmqStreamClosed as exc:
            raise TransportClosed(f"transport {self.endpoint} is closed") from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._peers.close()
            self._stream.close()
