"""An actor served over shared-memory rings: the process side of a ShmProcessRef.

The same :class:`ActorServer` (strict decoding, ``Failure(-1)`` for garbage,
the mailbox), fed from the rings. Two threads read this rank's calls, one at a
time and in order (``RingReceiver.lock``):

- the event loop, when its eventfd fires (calls to loop methods, health
  probes, the ready handshake): each message is dispatched in that callback,
  from the ring's memory; a call taken at once is decoded before the callback
  returns, one that must wait is copied first;
- the work thread, when its own eventfd fires (the executor wakes it for
  ``thread=True`` calls): with nothing queued before the call, it takes the
  call itself, decodes it from the ring, runs it and writes the reply. A step
  then costs one wake-up, with the loop asleep. Whatever it may not take
  (another kind of message, or calls waiting before this one) it leaves to the
  loop, which it wakes.

Replies go into this rank's reply ring, from either thread. A corrupt call
ring stops the actor loudly (``serve`` raises; the process exits non-zero;
the executor's death watch fails every pending call): nothing after the damage
can be read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from actorexec.protocol.envelopes import Call
from actorexec.protocol.errors import ProtocolError

from .actor import Actor
from .mailbox import ReplySink
from .server import ActorServer
from .transport.shm_channel import ShmEndpoint, ShmServerLink
from .transport.shm_spin import AdaptiveSpin, max_spin_s, pacing_enabled

logger = logging.getLogger("actorexec.runtime.server")


class ShmActorServer(ActorServer):
    """Hosts one actor on the rings of a :class:`ShmEndpoint`."""

    borrowed_frames = True
    replies_from_thread = True
    transport: ShmServerLink

    def __init__(self, actor: Actor, transport: ShmServerLink, rank: int) -> None:
        super().__init__(actor, transport, rank)
        self._job: Callable[[], None] | None = None  # taken by the work thread, to run now
        self._reply_sink = super()._sink(b"")  # one peer, the executor: one sink for all calls

    @classmethod
    def attach(cls, actor: Actor, endpoint: ShmEndpoint) -> ShmActorServer:
        return cls(actor, ShmServerLink(endpoint, asyncio.get_running_loop()), endpoint.rank)

    async def _recv_loop(self) -> None:
        """Runs only once the actor is running, so the ready handshake means serving."""
        self.transport.start(self._on_message)
        receiver = self.transport.receiver
        self.actor.work_thread().watch(self.transport.thread_wake_fd, self._poll_on_thread,
                                       lambda: receiver.next_lane() in (1, -1),
                                       AdaptiveSpin(max_spin_s(), pacing_enabled()),
                                       lambda on: receiver.set_polling(1, on),
                                       receiver.published_s)
        await self.transport.wait_failure()  # raises why the call ring stopped

    def _on_message(self, frames: list[memoryview]) -> None:
        self._dispatch(b"", frames)

    def _sink(self, peer: bytes) -> ReplySink:
        return self._reply_sink

    # -- on the work thread ----------------------------------------------------
    def _poll_on_thread(self) -> bool:
        """Takes and runs the next call if it is this thread's to take; True if it did."""
        work = self.actor.work_thread()
        taken = self.transport.receiver.take_one(lambda: not work.has_jobs(), self._take)
        job, self._job = self._job, None
        if job is None:
            return False
        job()
        return bool(taken)

    def _take(self, frames: list[memoryview]) -> bool:
        """Under the receiver's lock: take a ``thread=True`` call, or decline (the loop will)."""
        try:
            call = self._codec.decode(frames[0])
        except ProtocolError:
            return False  # the loop answers garbage
        if not isinstance(call, Call):
            return False
        exposed = self.mailbox.methods.get(call.method)
        if exposed is None or not exposed.thread:
            return False
        self._job = self.mailbox.take_on_thread(call, frames[1:], self._reply_sink)
        return self._job is not None
