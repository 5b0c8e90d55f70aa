"""An actor served on a bound ROUTER socket: the process side of a ProcessRef.

Every frame is decoded strictly. A frame that cannot be decoded is logged and
answered with ``Failure(call_id=-1)`` (or the call's id when the envelope was
readable but the arguments were not) and nothing runs: one bad peer cannot
stop the actor serving others. The receive loop runs in the mailbox's task
group: a socket error there, or a reply that cannot be sent, stops the actor
loudly (``serve`` raises; the process exits non-zero and its parent's death
watch fails every pending call).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any

from actorexec.protocol.codec import EnvelopeCodec, PayloadEncoder
from actorexec.protocol.envelopes import Call, Failure, Ready, Result
from actorexec.protocol.errors import ProtocolError

from .actor import READY_METHOD, Actor
from .errors import failure_from
from .mailbox import Mailbox, ReplySink
from .transport import bind_router

logger = logging.getLogger("actorexec.runtime.server")

# With linger 0, closing the socket discards what ZeroMQ has not yet written:
# give the last replies (a shutdown's, or the failures of a fatal stop) this long.
FLUSH_S = 0.05


class ActorServer:
    """Hosts one actor behind a ROUTER; replies go back to whichever peer called."""

    # A transport whose frames are views lent for the duration of a dispatch (a ring's
    # memory) sets this: a call that cannot be taken at once gets a copy of its payload.
    borrowed_frames = False
    # A transport whose send is thread-safe sets this: the work thread answers its call.
    replies_from_thread = False

    def __init__(self, actor: Actor, transport: Any, rank: int) -> None:
        self.actor = actor
        self.transport = transport
        self.rank = rank
        self.mailbox = Mailbox(actor, replies_from_thread=self.replies_from_thread)
        self._codec = EnvelopeCodec()
        self._encoder = PayloadEncoder()  # not re-entrant: used under _send_lock
        self._send_lock = threading.Lock()

    @classmethod
    async def bind(cls, actor: Actor, endpoint: str, rank: int, backend: str) -> ActorServer:
        return cls(actor, await bind_router(endpoint, backend), rank)

    async def serve(self, *beside: Coroutine[Any, Any, None]) -> None:
        """Serve until the actor stops (its ``shutdown``); raises if it stopped on a failure.
        ``beside`` run in the actor's task group (a host's own watch): one that raises stops
        the actor loudly, as its ``background()`` would."""
        try:
            await self.mailbox.run(self._recv_loop(), self.transport.wait_send_failure(),
                                   *beside)
        finally:
            await asyncio.sleep(FLUSH_S)
            self.transport.close()
            # zmq removes an ipc file only on a clean context teardown; we own it.
            if self.transport.endpoint.startswith("ipc://"):
                with contextlib.suppress(OSError):
                    os.unlink(self.transport.endpoint.removeprefix("ipc://"))

    async def _recv_loop(self) -> None:
        """Runs only once the actor is running, so the ready handshake means serving."""
        while True:
            msg = await self.transport.recv()  # TransportClosed here is fatal: nobody closed it
            if len(msg) < 2:
                logger.error("rank %d: message without an envelope frame dropped", self.rank)
                continue
            self._dispatch(msg[0], msg[1:])

    def _dispatch(self, peer: bytes, frames: list[bytes]) -> None:
        try:
            envelope = self._codec.decode(frames[0])
            if not isinstance(envelope, Call):
                raise ProtocolError(f"an actor accepts only calls, got {type(envelope).__name__}")
        except ProtocolError as exc:
            logger.error("rank %d: undecodable frame from a peer, nothing run: %s", self.rank, exc)
            self._send_failure(peer, failure_from(-1, exc))
            return
        if envelope.method == READY_METHOD:
            with self._send_lock:
                self.transport.send_to(peer, [self._codec.encode(Ready(self.rank, os.getpid()))])
            return
        payload = frames[1:]
        if self.borrowed_frames and not self.mailbox.takes_now:
            payload = [bytes(frame) for frame in payload]  # kept past this dispatch: copied
        self.mailbox.put(envelope, payload, self._sink(peer))

    def _sink(self, peer: bytes) -> ReplySink:
        """Where replies to ``peer``'s calls go (one sink per message: peers differ)."""
        return lambda c, ok, v: self._reply(peer, c, ok, v)

    def _reply(self, peer: bytes, call: Call, ok: bool, value: Any) -> None:
        """The reply sink (from the loop, or from the work thread where the transport allows)."""
        with self._send_lock:
            if ok:
                if not call.reply_on_success:  # the wire allows asking for failures only
                    return
                try:
                    payload = self._encoder.encode(value)
                except Exception as exc:  # an unencodable result is the call's failure
                    self._send_failure_locked(peer, failure_from(call.call_id, exc))
                    return
                self.transport.send_to(peer, [self._codec.encode(Result(call.call_id)),
                                              *payload])
            else:
                if isinstance(value, ProtocolError):
                    logger.error("rank %d: bad arguments for %s, nothing run: %s",
                                 self.rank, call.method, value)
                self._send_failure_locked(peer, failure_from(call.call_id, value))

    def _send_failure(self, peer: bytes, failure: Failure) -> None:
        with self._send_lock:
            self._send_failure_locked(peer, failure)

    def _send_failure_locked(self, peer: bytes, failure: Failure) -> None:
        self.transport.send_to(peer, [self._codec.encode(failure)])
