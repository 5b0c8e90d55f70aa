"""A ref to an actor on this host, in a process someone else owns (a Ray actor), over
shared-memory rings.

The calls are :class:`ShmProcessRef`'s (shm_ref.py: one ring write for every
same-host rank, replies decoded from the ring); everything about the process
is :class:`RemoteRef`'s (its owner kills it and knows why it died). What
replaces the tcp connection as the sign of death (the ring has no connection
to break) is :class:`HostWatch`: a pidfd of the host's process, which the
kernel makes readable the moment the process exits however it dies, and the
hand-off's lifeline socket, which the host closes when it stops serving (an
orderly shutdown, or a fatal stop such as its node going away). Both sit on
the event loop (``add_reader``): no thread, no polling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .refs import DeathCallback
from .remote_ref import RemoteRef
from .shm_handoff import HostLine
from .shm_ref import ShmCalls
from .transport.shm_channel import ShmCallerLink, ShmChannel

PROCESS_EXITED = "its process exited"
STOPPED_SERVING = "it stopped serving (it closed its lifeline)"


class HostWatch:
    """Calls ``on_lost(cause)`` once: the host's process exited, or it closed its lifeline.
    Owns the :class:`HostLine` (closes its socket and pidfd on :meth:`close`)."""

    def __init__(self, line: HostLine, on_lost: Callable[[str], None]) -> None:
        self._line = line
        self._on_lost = on_lost
        self._fired = False
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(line.pidfd, self._fire, PROCESS_EXITED)
        # The host never sends after its hello: readable means closed (EOF) or broken.
        self._loop.add_reader(line.lifeline.fileno(), self._fire, STOPPED_SERVING)
        self._closed = False

    def _fire(self, cause: str) -> None:
        if self._fired or self._closed:
            return
        self._fired = True
        self._remove_readers()
        self._on_lost(cause)

    def _remove_readers(self) -> None:
        self._loop.remove_reader(self._line.pidfd)
        self._loop.remove_reader(self._line.lifeline.fileno())

    def close(self) -> None:
        if self._closed:
            return
        if not self._fired:
            self._remove_readers()
        self._closed = True
        self._line.close()


class ShmRemoteRef(ShmCalls, RemoteRef):
    """Rank ``rank`` of a Ray-placed (or otherwise foreign-owned) actor on this host, ring
    slot ``slot`` of ``channel``, granted through :class:`ShmHandoff` (``line``)."""

    transport: ShmCallerLink

    def __init__(self, channel: ShmChannel, slot: int, line: HostLine, rank: int, node: str,
                 kill: Callable[[], None], loop_methods: frozenset[str],
                 on_death: DeathCallback | None = None,
                 on_connection_lost: Callable[[RemoteRef], None] | None = None) -> None:
        self._line = line
        link = ShmCallerLink(channel, slot)
        super().__init__(link, rank, line.pid, node, kill, on_death, on_connection_lost)
        self._join_channel(link, loop_methods)
        link.start(self._on_message)

    def _watch_connection(self) -> HostWatch:
        return HostWatch(self._line, self._host_lost)

    def _host_lost(self, cause: str) -> None:
        self.lost_cause = cause
        self._lost()
