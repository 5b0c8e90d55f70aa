"""A ref to a same-host actor process over shared-memory rings (the default for mp ranks).

A :class:`ProcessRef` in everything that concerns the process (ownership from
birth, the death watch on its sentinel, shutdown); only the link differs. All
refs of one :class:`ShmChannel` share its call ids and take a call for several
ranks in one write (:meth:`submit_group`). A call to a ``thread=True`` method
wakes the rank's work thread, which takes it straight from the ring; any
other wakes its event loop. Replies are delivered from the reply ring's
eventfd callback, decoded straight from the ring's memory: no task wakes per
reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from actorexec.protocol.codec import EnvelopeCodec
from actorexec.protocol.envelopes import Call

from .child import ExitCleanup, import_path
from .process import ProcessRef, new_child_process
from .refs import ActorRef, DeathCallback, PreparedCall
from .transport.shm_channel import ShmCallerLink, ShmChannel

_CODEC = EnvelopeCodec()


class ShmCalls:
    """Calls over a :class:`ShmChannel`, for a ref that is ring slot ``slot`` of it (the
    rank's index among the channel's ranks; for ``mp`` its rank). Shared by the refs of
    spawned children and of Ray actors on this host; ``accepts_calls`` and ``expect``
    come from the ref (SocketRef)."""

    channel: ShmChannel
    slot: int
    _loop_methods: frozenset[str]  # the rest run on the work thread (lane 1)

    def _join_channel(self, link: ShmCallerLink, loop_methods: frozenset[str]) -> None:
        self.channel = link.channel
        self.broadcast = link.channel
        self.slot = link.rank
        self._ids = link.channel.call_ids  # one numbering for the channel: ids never clash
        self._loop_methods = loop_methods

    def lane(self, method: str) -> int:
        """Whom a call to ``method`` wakes: the rank's loop (0) or its work thread (1)."""
        return 0 if method in self._loop_methods else 1

    def submit(self, prepared: PreparedCall, deadline: float | None = None) -> Any:
        call = Call(next(self._ids), prepared.method, deadline)
        if self.accepts_calls:  # type: ignore[attr-defined]
            self.channel.send([_CODEC.encode(call), *prepared.frames], 1 << self.slot,
                              self.lane(prepared.method))
        return self.expect(call.call_id, prepared, deadline)  # type: ignore[attr-defined]

    def submit_group(self, refs: Sequence[ActorRef], prepared: PreparedCall,
                     deadline: float | None = None) -> list[Any]:
        """One write of ``prepared`` for every ref in ``refs`` that still accepts calls."""
        call_id = next(self._ids)
        ranks_mask = 0
        for ref in refs:  # ShmCalls refs that share this channel
            if ref.accepts_calls:  # type: ignore[attr-defined]
                ranks_mask |= 1 << ref.slot  # type: ignore[attr-defined]
        if ranks_mask:
            call = Call(call_id, prepared.method, deadline)
            self.channel.send([_CODEC.encode(call), *prepared.frames], ranks_mask,
                              self.lane(prepared.method))
        return [ref.expect(call_id, prepared, deadline) for ref in refs]  # type: ignore[attr-defined]


def loop_methods_of(actor_path: str) -> frozenset[str]:
    """The exposed methods of ``actor_path`` that run on its loop (not its work thread)."""
    methods = import_path(actor_path).rpc_methods
    return frozenset(name for name, how in methods.items() if not how.thread)


class ShmProcessRef(ShmCalls, ProcessRef):
    """One rank of a :class:`ShmChannel`, in its own spawned process."""

    transport: ShmCallerLink

    def __init__(self, process: Any, link: ShmCallerLink, rank: int,
                 on_death: DeathCallback | None = None,
                 loop_methods: frozenset[str] = frozenset()) -> None:
        super().__init__(process, link, rank, on_death)
        self._join_channel(link, loop_methods)
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
        loop_methods = loop_methods_of(actor_path)
        link = ShmCallerLink(channel, rank)
        process.start()
        return cls(process, link, rank, on_death, loop_methods)  # no await since start(): owned
