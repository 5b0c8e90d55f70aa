"""An actor served over shared-memory rings: the process side of a ShmProcessRef.

The same :class:`ActorServer` (strict decoding, ``Failure(-1)`` for garbage,
the mailbox), fed differently: the call ring's eventfd is on the loop, and
each message addressed to this rank is dispatched right in that callback,
from the ring's memory. A call taken at once (nothing queued before it) is
decoded before the callback returns and its record is released; one that must
wait is copied first. Replies are written into this rank's reply ring, from
the loop or straight from the work thread. A corrupt call ring stops the actor
loudly (``serve`` raises; the process exits non-zero; the executor's death
watch fails every pending call), since nothing after the damage can be read.
"""

from __future__ import annotations

import asyncio
import logging

from .actor import Actor
from .server import ActorServer
from .transport.shm_channel import ShmEndpoint, ShmServerLink

logger = logging.getLogger("actorexec.runtime.server")


class ShmActorServer(ActorServer):
    """Hosts one actor on the rings of a :class:`ShmEndpoint`."""

    borrowed_frames = True
    replies_from_thread = True
    transport: ShmServerLink

    @classmethod
    def attach(cls, actor: Actor, endpoint: ShmEndpoint) -> ShmActorServer:
        return cls(actor, ShmServerLink(endpoint, asyncio.get_running_loop()), endpoint.rank)

    async def _recv_loop(self) -> None:
        """Runs only once the actor is running, so the ready handshake means serving."""
        self.transport.start(self._on_message)
        await self.transport.wait_failure()  # raises why the call ring stopped

    def _on_message(self, frames: list[memoryview]) -> None:
        self._dispatch(b"", frames)
