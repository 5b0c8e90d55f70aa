"""Same-host ranks over shared memory: one call ring that every rank reads, one reply ring
per rank, eventfds to wake the readers.

The executor's :class:`ShmChannel` makes every ring (memfd) and eventfd before
any rank starts; each rank inherits its :class:`ShmEndpoint` (the fds) when it
is spawned and attaches with :meth:`ShmServerLink.attach`. A call for several
ranks is written once (the ring's records carry a bitmask of their readers);
each rank replies into its own ring. A rank has two wake-ups: its event
loop's and its work thread's; a call for a ``thread=True`` method wakes the
work thread, which takes it straight from the ring (lane 1), anything else
wakes the loop (lane 0). Nothing here has a name in the filesystem, so
nothing is left behind whoever is killed.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .base import TransportClosed
from .peer_outbox import MAX_QUEUED_PER_PEER
from .shm_fds import InheritedFd, MappedRing, close_fds, new_eventfd
from .shm_link import RingReceiver, RingSender
from .shm_spin import AdaptiveSpin, LoopSpin, max_spin_s

# Ring sizes, which are also what each ring costs in memory: its pages are mapped in
# full when it is (``MappedRing``), as a ring cycles through all of them anyway. A
# 256-request decode step is ~6 KB; a message larger than a quarter of a ring travels in
# chunks, so any size gets through.
CALL_RING_BYTES = 4 << 20
REPLY_RING_BYTES = 1 << 20


@dataclass(frozen=True)
class ShmEndpoint:
    """What rank ``rank`` of ``ranks`` needs to attach. Pickled only by multiprocessing's
    spawn, which hands the fds to the child (:class:`InheritedFd`)."""

    rank: int
    ranks: int
    call_ring: InheritedFd
    call_capacity: int
    call_wake: InheritedFd
    call_thread_wake: InheritedFd
    call_space: InheritedFd
    reply_ring: InheritedFd
    reply_capacity: int
    reply_wake: InheritedFd
    reply_space: InheritedFd

    def __str__(self) -> str:
        return f"shm://rank{self.rank}"


class ShmChannel:
    """The executor's side: rings and eventfds for ``ranks`` local ranks; owns them all.

    ``call_ids`` numbers every call on the channel (a call written once for
    several ranks has one id). Made outside the loop; the ring ends that need the
    loop are made on first use.
    """

    def __init__(self, ranks: int, call_capacity: int = CALL_RING_BYTES,
                 reply_capacity: int = REPLY_RING_BYTES) -> None:
        self.ranks = ranks
        self.call_ids = itertools.count(1)
        self._fds: list[int] = []
        self._rings: list[MappedRing] = []
        try:
            self.call_ring = self._ring("actorexec-calls", call_capacity, ranks)
            # per rank: (its loop's eventfd, its work thread's eventfd)
            self.call_wake = [(self._eventfd(), self._eventfd()) for _ in range(ranks)]
            self.call_space = self._eventfd()
            self.reply_rings = [self._ring(f"actorexec-replies-{r}", reply_capacity, 1)
                                for r in range(ranks)]
            self.reply_wake = [self._eventfd() for _ in range(ranks)]
            self.reply_space = [self._eventfd() for _ in range(ranks)]
        except BaseException:
            self.close()
            raise
        self._sender: RingSender | None = None
        self._receivers: dict[int, RingReceiver] = {}
        self._loop_spin: LoopSpin | None = None  # the short wait for replies
        self._spin = AdaptiveSpin(max_spin_s(caller=True))
        self._outstanding = 0  # replies owed (every call gets exactly one per rank)
        self.closed = False

    def _ring(self, name: str, capacity: int, readers: int) -> MappedRing:
        ring = MappedRing.create(name, capacity, readers)
        self._rings.append(ring)
        return ring

    def _eventfd(self) -> int:
        fd = new_eventfd()
        self._fds.append(fd)
        return fd

    def endpoint(self, rank: int) -> ShmEndpoint:
        return ShmEndpoint(
            rank=rank, ranks=self.ranks, call_ring=InheritedFd(self.call_ring.fd),
            call_capacity=self.call_ring.capacity,
            call_wake=InheritedFd(self.call_wake[rank][0]),
            call_thread_wake=InheritedFd(self.call_wake[rank][1]),
            call_space=InheritedFd(self.call_space),
            reply_ring=InheritedFd(self.reply_rings[rank].fd),
            reply_capacity=self.reply_rings[rank].capacity,
            reply_wake=InheritedFd(self.reply_wake[rank]),
            reply_space=InheritedFd(self.reply_space[rank]))

    def send(self, frames: Sequence[Any], ranks_mask: int, lane: int = 0) -> None:
        """One message for every rank whose bit is set, waking each rank's loop (lane 0) or
        work thread (lane 1); never blocks (queues while full)."""
        if self.closed:
            raise TransportClosed("the shared-memory channel is closed")
        if self._sender is None:
            loop = asyncio.get_running_loop()
            self._sender = RingSender(self.call_ring.ring, self.call_wake, self.call_space,
                                      loop, "call ring")
            self._loop_spin = LoopSpin(loop, self._replies_waiting, self._take_replies,
                                       more=lambda: self._outstanding > 0,
                                       polling=self._set_polling)
        self._sender.send(frames, ranks_mask, lane)
        if self._outstanding == 0:
            self._spin.waiting()
        self._outstanding += ranks_mask.bit_count()
        assert self._loop_spin is not None
        self._loop_spin.start(self._spin.window())

    def receive_replies(self, rank: int, deliver: Callable[[list[memoryview]], None]
                        ) -> RingReceiver:
        """Starts delivering rank ``rank``'s replies (views valid during ``deliver``)."""
        receiver = RingReceiver(self.reply_rings[rank].ring, 0, self.reply_wake[rank],
                                self.reply_space[rank], asyncio.get_running_loop(),
                                f"reply ring of rank {rank}")
        self._receivers[rank] = receiver

        def counted(frames: list[memoryview]) -> None:
            self._outstanding = max(0, self._outstanding - 1)
            if self._outstanding == 0:
                self._spin.arrived()
            deliver(frames)

        receiver.start(counted)
        return receiver

    def _replies_waiting(self) -> bool:
        for receiver in self._receivers.values():  # (a loop, not any(): once per poll)
            if receiver.pending():
                return True
        return False

    def _set_polling(self, polling: bool) -> None:
        for receiver in self._receivers.values():
            receiver.set_polling(0, polling)

    def _take_replies(self) -> None:
        for receiver in list(self._receivers.values()):
            if receiver.pending():
                receiver.drain()

    def stop_replies(self, rank: int) -> None:
        receiver = self._receivers.pop(rank, None)
        if receiver is not None:
            receiver.close(TransportClosed(f"rank {rank}'s link is closed"))

    def close(self) -> None:
        """Stops every ring end and frees the fds (idempotent; the executor's shutdown)."""
        self.closed = True
        if getattr(self, "_loop_spin", None) is not None:
            self._loop_spin.stop()  # type: ignore[union-attr]
        for rank in list(getattr(self, "_receivers", {})):
            self.stop_replies(rank)
        sender = getattr(self, "_sender", None)
        if sender is not None:
            sender.close()
        for ring in self._rings:
            ring.close()
        close_fds(*self._fds)
        self._fds.clear()


class ShmCallerLink:
    """Rank ``rank``'s end of a channel, as a ProcessRef's transport: ``send`` writes a call
    for this rank alone; replies are delivered by callback (:meth:`start`), so ``recv``
    only reports the reply ring failing, or TransportClosed once closed."""

    def __init__(self, channel: ShmChannel, rank: int) -> None:
        self.channel = channel
        self.rank = rank
        self.endpoint = f"shm://rank{rank}"
        self._receiver: RingReceiver | None = None

    def start(self, deliver: Callable[[list[memoryview]], None]) -> None:
        self._receiver = self.channel.receive_replies(self.rank, deliver)

    def send(self, frames: Sequence[Any], lane: int = 0) -> None:
        self.channel.send(frames, 1 << self.rank, lane)

    async def recv(self) -> list[bytes]:
        if self._receiver is None:
            raise TransportClosed(f"{self.endpoint} was never started")
        await self._receiver.wait_failure()
        raise TransportClosed(f"{self.endpoint} is closed")  # pragma: no cover

    def close(self) -> None:
        self.channel.stop_replies(self.rank)


class ShmServerLink:
    """A rank's end, in the rank's process: reads calls addressed to it, writes replies.

    ``send_to`` may be called from any thread (the work thread replies itself).
    """

    def __init__(self, endpoint: ShmEndpoint, loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint = str(endpoint)
        # The eventfds; each MappedRing closes its own memfd.
        self._fds = [f.fd for f in (endpoint.call_wake, endpoint.call_thread_wake,
                                    endpoint.call_space, endpoint.reply_wake,
                                    endpoint.reply_space)]
        self.thread_wake_fd = endpoint.call_thread_wake.fd
        self.ranks = endpoint.ranks
        self._calls = MappedRing(endpoint.call_ring.fd, endpoint.call_capacity, endpoint.ranks,
                                 create=False)
        self._replies = MappedRing(endpoint.reply_ring.fd, endpoint.reply_capacity, 1,
                                   create=False)
        self.receiver = RingReceiver(self._calls.ring, endpoint.rank, endpoint.call_wake.fd,
                                     endpoint.call_space.fd, loop, "call ring",
                                     AdaptiveSpin(max_spin_s()))
        self.sender = RingSender(self._replies.ring, [[endpoint.reply_wake.fd]],
                                 endpoint.reply_space.fd, loop, "reply ring",
                                 max_queued=MAX_QUEUED_PER_PEER)

    def start(self, deliver: Callable[[list[memoryview]], None]) -> None:
        self.receiver.start(deliver)

    def send_to(self, identity: bytes, frames: Sequence[Any]) -> None:
        self.sender.send(frames, 1)

    async def wait_send_failure(self) -> None:
        """Never returns: a reply ring that is full only queues (then drops, logged)."""
        await asyncio.Event().wait()

    async def wait_failure(self) -> None:
        await self.receiver.wait_failure()

    def close(self) -> None:
        self.receiver.close()
        self.sender.close()
        self._calls.close()
        self._replies.close()
        close_fds(*self._fds)
        self._fds.clear()
