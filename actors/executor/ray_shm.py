"""The ray backend's same-node ranks: shared-memory rings, as the ``mp`` backend uses.

vLLM's current Ray executor does the same: Ray places and ends the
processes, and ranks on the driver's own node take the fast same-host message
path. Which ranks qualify is Ray's word: a rank whose host runs on the
driver's Ray node (node id) shares its memory. One :class:`ShmChannel` holds
the rings of every such rank (slot ``i`` for the ``i``-th same-node rank, so a
step is one ring write for all of them); the fds reach each host over the
hand-off socket (runtime/shm_handoff.py), since Ray's processes are not our
children. Ranks on other nodes keep tcp.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from actorexec.runtime.refs import DeathCallback
from actorexec.runtime.remote_ref import RemoteRef
from actorexec.runtime.shm_handoff import HostLine, ShmHandoff, handoff_available
from actorexec.runtime.shm_ref import loop_methods_of
from actorexec.runtime.shm_remote_ref import ShmRemoteRef
from actorexec.runtime.transport.shm_channel import ShmChannel


def rank_transports(configured: str, node_ids: Sequence[str], driver_node: str) -> list[str]:
    """Each rank's transport: ``shm`` for ranks on the driver's node when ``configured`` is
    ``shm`` (and this platform can hand fds over), ``tcp`` for the rest."""
    shm = configured == "shm" and handoff_available()
    return ["shm" if shm and node == driver_node else "tcp" for node in node_ids]


class SameNodeRings:
    """The rings of the same-node ranks ``ranks`` (in rank order), and their hand-off.
    Owns the channel and the listening socket (:meth:`close`)."""

    def __init__(self, ranks: Sequence[int]) -> None:
        self.slots = {rank: slot for slot, rank in enumerate(ranks)}
        self.channel = ShmChannel(len(ranks))  # every ring before any rank attaches
        try:
            self.handoff = ShmHandoff(self.channel)
        except BaseException:
            self.channel.close()
            raise
        self.lines: dict[int, HostLine] = {}  # by rank; each moves into its ref

    def start_kwargs(self, rank: int) -> dict[str, object]:
        """What ``RayWorkerHost.start`` needs to collect rank ``rank``'s rings."""
        return {"shm_address": self.handoff.address, "shm_nonce": self.handoff.nonce,
                "shm_slot": self.slots[rank]}

    async def hand_out(self, pids: dict[int, int], timeout_s: float) -> None:
        """Gives each same-node rank (rank -> its host's pid) its fds; then stops listening."""
        try:
            by_slot = await self.handoff.hand_out(
                {self.slots[rank]: pid for rank, pid in pids.items()}, timeout_s)
        finally:
            self.handoff.close()
        rank_of = {slot: rank for rank, slot in self.slots.items()}
        self.lines = {rank_of[slot]: line for slot, line in by_slot.items()}

    def ref(self, rank: int, node: str, worker_cls: str, kill: Callable[[], None],
            on_death: DeathCallback, on_connection_lost: Callable[[RemoteRef], None]
            ) -> ShmRemoteRef:
        return ShmRemoteRef(self.channel, self.slots[rank], self.lines.pop(rank), rank, node,
                            kill, loop_methods_of(worker_cls), on_death, on_connection_lost)

    def close(self) -> None:
        """Stops listening, frees the rings (the refs close their own lines first)."""
        self.handoff.close()
        for line in self.lines.values():
            line.close()
        self.lines.clear()
        self.channel.close()
