"""A ROUTER's replies, queued per peer: one peer's full pipe never delays another's replies.

ZeroMQ keeps one outgoing pipe per connected peer. A peer that stops reading
fills its pipe (the high-water mark, 1,000 messages by default); with
``ROUTER_MANDATORY`` a further send to it fails with EAGAIN. A single ordered
write buffer (aiozmq's, or pyzmq's queue of pending sends) would then hold
every later reply, to every peer, behind that one. Here each reply is tried at
once without blocking; only replies to a peer whose own pipe is full wait, in
that peer's queue, in order, and are retried on a timer. A peer that has left
(EHOSTUNREACH) loses its replies with a warning; it is never fatal. Any other
send error propagates: from ``send_to`` to the caller (the actor's reply task),
from a retry to whoever awaits :meth:`PeerOutbox.wait_failure`; either way the
actor stops loudly.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections import deque
from collections.abc import Callable

import zmq

from actorexec.protocol.codec import Frame

logger = logging.getLogger("actorexec.runtime.transport")

# Replies held for one peer whose pipe is full, on top of the ~1,000 in its ZeroMQ pipe.
# A caller that reads its replies never comes near this; beyond it replies are dropped
# (logged): a peer that stopped reading must not grow the actor's memory without bound.
MAX_QUEUED_PER_PEER = 10_000
_FIRST_RETRY_S = 0.001
_LAST_RETRY_S = 0.02


class PeerOutbox:
    """Per-peer queues in front of a ROUTER's non-blocking send.

    ``try_send(message)`` sends ``[identity, *frames]`` with ``DONTWAIT`` and
    raises ``zmq.Again`` when that peer's pipe is full.
    """

    def __init__(self, try_send: Callable[[list[Frame]], None], endpoint: str,
                 max_queued: int = MAX_QUEUED_PER_PEER) -> None:
        self._try_send = try_send
        self._endpoint = endpoint
        self._max_queued = max_queued
        self._queued: dict[bytes, deque[list[Frame]]] = {}
        self._dropped: dict[bytes, int] = {}
        self._retry: asyncio.TimerHandle | None = None
        self._retry_s = _FIRST_RETRY_S
        self._gone = 0  # replies dropped because their peer had left
        self._failure: asyncio.Future[None] | None = None

    def send_to(self, identity: bytes, frames: list[Frame]) -> None:
        message = [identity, *frames]
        queue = self._queued.get(identity)
        if queue is None:  # nothing waits for this peer: try at once
            if self._send(identity, message) != "full":
                return
            queue = self._queued[identity] = deque()
            self._schedule_retry()
        self._enqueue(identity, queue, message)  # behind this peer's earlier replies

    async def wait_failure(self) -> None:
        """Never returns; raises the error of a queued reply that could not be sent (the
        retry runs outside any caller). The host awaits this in its task group."""
        if self._failure is None:
            self._failure = asyncio.get_running_loop().create_future()
        await self._failure

    def _fail(self, exc: Exception) -> None:
        logger.error("%s: sending a queued reply failed: %r", self._endpoint, exc)
        self._queued.clear()
        if self._failure is None:
            self._failure = asyncio.get_running_loop().create_future()
        if not self._failure.done():
            self._failure.set_exception(exc)

    def queued(self, identity: bytes) -> int:
        """Replies waiting for ``identity``'s pipe to drain."""
        queue = self._queued.get(identity)
        return 0 if queue is None else len(queue)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._queued.clear()

    def _send(self, identity: bytes, message: list[Frame]) -> str:
        """``"sent"``, ``"full"`` (try later) or ``"gone"`` (the peer left; dropped)."""
        try:
            self._try_send(message)
        except zmq.Again:
            return "full"
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            self._gone += 1
            if self._gone & (self._gone - 1) == 0:  # 1, 2, 4, 8, ...: no log flood
                logger.warning("%s: a reply to a peer that has left was dropped (%d so far)",
                               self._endpoint, self._gone)
            self._queued.pop(identity, None)  # its queued replies go with it
            self._dropped.pop(identity, None)
            return "gone"
        return "sent"

    def _enqueue(self, identity: bytes, queue: deque[list[Frame]], message: list[Frame]) -> None:
        if len(queue) < self._max_queued:
            queue.append(message)
            return
        dropped = self._dropped.get(identity, 0) + 1
        self._dropped[identity] = dropped
        if dropped == 1:
            logger.error("%s: a peer has not read its last %d replies; dropping further replies "
                         "to it until its pipe drains", self._endpoint, len(queue))

    def _schedule_retry(self) -> None:
        if self._retry is None:
            self._retry = asyncio.get_running_loop().call_later(self._retry_s, self._flush)

    def _flush(self) -> None:
        self._retry = None
        progressed = False
        for identity in list(self._queued):
            queue = self._queued[identity]
            while queue:
                try:
                    outcome = self._send(identity, queue[0])
                except Exception as exc:  # not EAGAIN/EHOSTUNREACH: the socket failed
                    self._fail(exc)
                    return
                if outcome == "full":
                    break
                if outcome == "gone":
                    break  # _send dropped the whole queue
                queue.popleft()
                progressed = True
            if not queue:
                self._queued.pop(identity, None)
                dropped = self._dropped.pop(identity, 0)
                if dropped:
                    logger.error("%s: %d replies to a peer that did not read were dropped",
                                 self._endpoint, dropped)
        if self._queued:
            self._retry_s = _FIRST_RETRY_S if progressed else min(2 * self._retry_s,
                                                                  _LAST_RETRY_S)
            self._schedule_retry()
        else:
            self._retry_s = _FIRST_RETRY_S
