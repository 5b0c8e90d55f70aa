"""A ref to a same-host actor process over shared-memory rings (the default for mp ranks).

A :class:`ProcessRef` in everything that concerns the process (ownership from
birth, the death watch on its sentinel, shutdown); only the link differs. All
refs of one :class:`ShmChannel` share its call ids and take a call for several
ranks in one write (:meth:`submit_group`). Replies are delivered from the
reply ring's eventfd callback, decoded straight from the ring's memory: no
task wakes per reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from actorexec.protocol.codec import EnvelopeCodec
from actorexec.protocol.envelopes import Call

from .child import ExitCleanup
from .process import ProcessRef, new_child_process
from .refs import ActorRef, DeathCallback, PreparedCall
from .transport.shm_channel import ShmCallerLink, ShmChannel

_CODEC = EnvelopeCodec()


class ShmProcessRef(ProcessRef):
    """One rank of a :class:`ShmChannel`, in its own spawned process."""

    transport: ShmCallerLink

    def __init__(self, process: Any, link: ShmCallerLink, rank: int,
                 on_death: DeathCallback | None = None) -> None:
        super().__init__(process, link, rank, on_death)
        self.channel = link.channel
        self.broadcast = link.channel
        self._ids = link.channel.call_ids  # one numbering for the channel: ids never clash
        link.start(self._on_message)

    @classmethod
    async def spawn_on(cls, channel: ShmChannel, actor_path: str, init_kwargs: dict[str, Any],
                       rank: int, on_death: DeathCallback | None = None,
                       use_uvloop: bool | None = None, private_dir: str | None = None,
                       shared_files: Sequence[str] = ()) -> ShmProcessRef:
        """Start ``actor_path`` as rank ``rank`` of ``channel``; returns its ref as soon as the
        process exists (then :meth:`wait_ready`). If the parent dies, the child removes
        ``shared_files`` and, the last one out, ``private_dir``."""
        cleanup = ExitCleanup(shared_files=tuple(shared_files), directory=private_dir)
        process = new_child_process(actor_path, init_kwargs, rank, channel.endpoint(rank),
                                    "shm", use_uvloop, cleanup)
        link = ShmCallerLink(channel, rank)
        process.start()
        return cls(process, link, rank, on_death)  # no await since start(): owned

    def submit_group(self, refs: Sequence[ActorRef], prepared: PreparedCall,
                     deadline: float | None = None) -> list[Any]:
        """One write of ``prepared`` for every ref in ``refs`` that still accepts calls."""
        group: list[ShmProcessRef] = list(refs)  # type: ignore[arg-type]  # share a channel
        call = Call(next(self._ids), prepared.method, deadline)
        ranks_mask = 0
        for ref in group:
            if ref.accepts_calls:
                ranks_mask |= 1 << ref.rank
        if ranks_mask:
            self.channel.send([_CODEC.encode(call), *prepared.frames], ranks_mask)
        return [ref.expect(call.call_id, prepared, deadline) for ref in group]
