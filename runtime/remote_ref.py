"""RemoteRef: a ref to an actor whose process runs on another host, owned by someone else.

There is no process sentinel for a process on another machine. What we have
is the connection: a ZeroMQ *monitor* on the DEALER reports the moment the
TCP connection to the actor breaks (the process died and its kernel closed
the socket, or the host answered no ZMTP heartbeat for three intervals: see
``heartbeat_options``). A broken connection means lost calls (a ROUTER cannot
re-deliver replies to a new connection), so it is the actor's death for us.
Whoever owns the process (a cluster manager such as Ray) usually knows *why*;
``on_connection_lost`` lets the owner add that before declaring the death.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Protocol

import zmq
from zmq.utils.monitor import parse_monitor_message

from actorexec.protocol.errors import ActorDiedError

from .refs import DeathCallback
from .socket_ref import SocketRef
from .transport import Transport, connect_dealer, heartbeat_options

logger = logging.getLogger("actorexec.runtime.remote_ref")
_monitor_ids = itertools.count()

# What a lost connection means when nobody knows more.
CONNECTION_LOST = "its connection closed (the process exited, or its host is unreachable)"


class DeathWatch(Protocol):
    """Whatever tells a :class:`RemoteRef` that its actor is gone; stopped by ``close``."""

    def close(self) -> None: ...


class ConnectionWatch:
    """Calls ``on_lost()`` once when ``sock``'s connection to its peer breaks.

    Reads the socket monitor's events on the event loop (``add_reader`` on the
    monitor's edge-triggered FD, drained until empty): no thread, no polling.
    """

    def __init__(self, sock: zmq.Socket, on_lost: Callable[[], None]) -> None:
        self._sock = sock
        self._on_lost = on_lost
        self._fired = False
        address = f"inproc://actorexec-monitor-{id(self)}-{next(_monitor_ids)}"
        sock.monitor(address, zmq.EVENT_DISCONNECTED)
        # A plain socket over the same libzmq context (inproc is per context), read here.
        self._pair = zmq.Context.shadow(sock.context.underlying).socket(zmq.PAIR)
        self._pair.setsockopt(zmq.LINGER, 0)
        self._pair.connect(address)
        self._fd = self._pair.getsockopt(zmq.FD)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._drain)
        self._loop.call_soon(self._drain)  # events may have arrived before the reader

    def _drain(self) -> None:
        if self._pair.closed:
            return
        while self._pair.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            event = parse_monitor_message(self._pair.recv_multipart(zmq.NOBLOCK))
            if event["event"] == zmq.EVENT_DISCONNECTED and not self._fired:
                self._fired = True
                self._on_lost()

    def close(self) -> None:
        """Stop watching (before or after the socket is closed)."""
        if self._pair.closed:
            return
        self._loop.remove_reader(self._fd)
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disable_monitor()
        self._pair.close(0)


class RemoteRef(SocketRef):
    """A ref to an actor served on ``tcp://`` by a process another party owns.

    ``kill()`` asks that owner to end the process. When the connection breaks,
    ``on_connection_lost(ref)`` decides what to do (it must end in
    :meth:`declare_dead` or :meth:`close`); without it, the actor is declared
    dead at once with :data:`CONNECTION_LOST`.
    """

    def __init__(self, transport: Transport, rank: int, pid: int, node: str,
                 kill: Callable[[], None], on_death: DeathCallback | None = None,
                 on_connection_lost: Callable[[RemoteRef], None] | None = None) -> None:
        self.pid = pid
        self.node = node
        self._kill = kill
        self._on_connection_lost = on_connection_lost
        super().__init__(transport, rank, on_death)
        self.disconnected = asyncio.Event()
        self.lost_cause = CONNECTION_LOST  # completes "lost: ..." once the watch fires
        self._watch = self._watch_connection()

    def _watch_connection(self) -> DeathWatch:
        """What calls :meth:`_lost` when the actor is gone (a subclass may watch otherwise);
        it has a ``close()``."""
        return ConnectionWatch(self.transport.zmq_socket, self._lost)

    @classmethod
    async def connect(cls, endpoint: str, rank: int, pid: int, node: str,
                      kill: Callable[[], None], backend: str = "auto",
                      heartbeat_s: float = 0.25, on_death: DeathCallback | None = None,
                      on_connection_lost: Callable[[RemoteRef], None] | None = None,
                      ) -> RemoteRef:
        transport = await connect_dealer(endpoint, backend, heartbeat_options(heartbeat_s))
        return cls(transport, rank, pid, node, kill, on_death, on_connection_lost)

    @property
    def name(self) -> str:
        return f"rank {self.rank} (pid {self.pid}) on node {self.node}"

    def died(self, cause: str, exitcode: int | None = None) -> ActorDiedError:
        return ActorDiedError(f"worker {self.name} {cause}", rank=self.rank, pid=self.pid,
                              exitcode=exitcode, node=self.node)

    def kill_actor(self) -> None:
        self._kill()

    def _lost(self) -> None:
        self.disconnected.set()
        if self._closing or self.dead is not None:
            return
        if self._on_connection_lost is not None:
            self._on_connection_lost(self)
            return
        reason = f": {self._fatal_reason}" if self._fatal_reason else ""
        self.declare_dead(self.died(f"lost: {self.lost_cause}{reason}"))

    async def close(self, grace_s: float = 5.0) -> None:
        """Wait up to ``grace_s`` for the actor to close its end (after its shutdown call),
        then close ours. Ending the process is the owner's part (``kill``)."""
        self._closing = True
        try:
            if not self.disconnected.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.disconnected.wait(), grace_s)
        finally:
            self.close_now()

    def close_now(self) -> None:
        """Synchronous (also on cancellation): stop watching, close the socket."""
        self._watch.close()
        self.close_socket()
