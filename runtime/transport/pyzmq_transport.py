"""Transport over pyzmq's own ``zmq.asyncio`` (the fallback where aiozmq cannot import)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import zmq
import zmq.asyncio

from actorexec.protocol.codec import Frame

from .base import Transport, TransportClosed, logger
from .peer_outbox import PeerOutbox


class PyzmqTransport(Transport):
    """A ``zmq.asyncio`` socket. DEALER sends go out at once unless queued ones wait (order
    kept); ROUTER replies go through per-peer queues (:class:`PeerOutbox`)."""

    def __init__(self, kind: str, endpoint: str, bind: bool,
                 options: Mapping[int, int] | None = None) -> None:
        self.endpoint = endpoint
        self._ctx = zmq.asyncio.Context.instance()
        self._sock = self._ctx.socket(getattr(zmq, kind))
        self._sock.setsockopt(zmq.LINGER, 0)
        if kind == "ROUTER":
            self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        for option, value in (options or {}).items():
            self._sock.setsockopt(option, value)
        if bind:
            self._sock.bind(endpoint)
        else:
            self._sock.connect(endpoint)
        self._closed = False
        self._peers = PeerOutbox(self._try_send, endpoint)

    def send(self, frames: Sequence[Frame]) -> None:
        self._send(list(frames))

    def send_to(self, identity: bytes, frames: Sequence[Frame]) -> None:
        if self._closed:
            raise TransportClosed(f"transport {self.endpoint} is closed")
        self._peers.send_to(identity, list(frames))

    def _try_send(self, message: list[Frame]) -> None:
        # DONTWAIT resolves at once (pyzmq short-circuits it; no blocking send is ever
        # queued on a ROUTER), so a full pipe raises zmq.Again here, not later.
        fut = self._sock.send_multipart(message, flags=zmq.DONTWAIT, copy=False)
        exc = fut.exception()
        if exc is not None:
            raise exc

    def _send(self, frames: list[Frame]) -> None:
        if self._closed:
            raise TransportClosed(f"transport {self.endpoint} is closed")
        fut = self._sock.send_multipart(frames, copy=False)
        if not fut.done():
            fut.add_done_callback(_log_send_error)
        elif fut.exception() is not None:
            _log_send_error(fut)

    async def recv(self) -> list[bytes]:
        if self._closed:
            raise TransportClosed(f"transport {self.endpoint} is closed")
        try:
            return await self._sock.recv_multipart()
        except (zmq.ZMQError, RuntimeError) as exc:  # closed under us
            raise TransportClosed(str(exc)) from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._peers.close()
            self._sock.close(linger=0)


def _log_send_error(fut: object) -> None:
    exc = fut.exception() if not fut.cancelled() else None  # type: ignore[attr-defined]
    if exc is not None:  # EHOSTUNREACH: the peer left before its reply went out
        logger.warning("zmq send failed: %s", exc)
