"""The transport interface: ordered, lossless multipart messaging over ZeroMQ.

Two socket roles are used. An actor process *binds* a ROUTER (it may serve
several peers: the executor, a test writing raw frames); a caller *connects*
a DEALER. ``send`` is synchronous and ordered: frames handed to it leave in
call order, which is what lets ``execute_model`` send at once from a plain
``def``. ROUTER sockets set ``ROUTER_MANDATORY`` (without it a ROUTER drops at
its high-water mark or for an unknown peer silently) and queue replies per
peer (``peer_outbox.py``): a peer that stops reading holds up only its own
replies, and a peer that has left loses its replies with a logged warning.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping, Sequence

import zmq

from actorexec.protocol.codec import Frame

from .peer_outbox import PeerOutbox

logger = logging.getLogger("actorexec.runtime.transport")

BACKENDS = ("aiozmq", "pyzmq")


class TransportClosed(Exception):
    """``recv`` on a closed transport."""


class Transport(abc.ABC):
    """One ZeroMQ socket on the running event loop."""

    endpoint: str
    _peers: PeerOutbox
    _sock: zmq.Socket  # the raw socket: options, and monitors (remote_ref.py)

    @property
    def zmq_socket(self) -> zmq.Socket:
        """The underlying ZeroMQ socket, for a connection monitor (never send or recv on it)."""
        return self._sock

    @abc.abstractmethod
    def send(self, frames: Sequence[Frame]) -> None:
        """Queue one multipart message (DEALER side); ordered, never dropped."""

    @abc.abstractmethod
    def send_to(self, identity: bytes, frames: Sequence[Frame]) -> None:
        """Send one message to the peer ``identity`` now, or queue it behind that peer's
        earlier replies (ROUTER side); never waits behind another peer."""

    async def wait_send_failure(self) -> None:
        """Never returns; raises if a reply queued for a slow peer later fails to send
        (ROUTER side). Hosts await it in their task group."""
        await self._peers.wait_failure()

    @abc.abstractmethod
    async def recv(self) -> list[bytes]:
        """The next message; on a ROUTER the first frame is the peer identity."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close at once (linger 0); a pending ``recv`` raises TransportClosed."""


def resolve_backend(name: str) -> str:
    """``"auto"`` → aiozmq when it imports (it fails on Python 3.14), else pyzmq."""
    if name == "auto":
        try:
            import aiozmq  # noqa: F401
        except Exception:  # ImportError, or a broken import on a new Python
            return "pyzmq"
        return "aiozmq"
    if name not in BACKENDS:
        raise ValueError(f"zmq backend {name!r} is not one of ('auto', *{BACKENDS})")
    return name


async def bind_router(endpoint: str, backend: str = "auto") -> Transport:
    """A ROUTER bound to ``endpoint`` (``ipc://path`` or ``tcp://host:port``)."""
    backend = resolve_backend(backend)
    if backend == "aiozmq":
        from .aiozmq_transport import AiozmqTransport
        return await AiozmqTransport.create("ROUTER", endpoint, bind=True)
    from .pyzmq_transport import PyzmqTransport
    return PyzmqTransport("ROUTER", endpoint, bind=True)


def heartbeat_options(heartbeat_s: float) -> dict[int, int]:
    """ZMTP heartbeats: a PING every ``heartbeat_s``; a connection silent for three of
    them is dropped (a monitor then sees it disconnect). Answered by libzmq's I/O thread,
    so a peer busy in Python still answers; only a dead or unreachable host falls silent."""
    ivl = max(1, int(heartbeat_s * 1000))
    return {zmq.HEARTBEAT_IVL: ivl, zmq.HEARTBEAT_TIMEOUT: 3 * ivl, zmq.HEARTBEAT_TTL: 3 * ivl}


async def connect_dealer(endpoint: str, backend: str = "auto",
                         options: Mapping[int, int] | None = None) -> Transport:
    """A DEALER connected to ``endpoint``; messages queue until the peer binds.
    ``options`` (socket option -> value, e.g. :func:`heartbeat_options`) are set before
    connecting, so they apply to the connection."""
    backend = resolve_backend(backend)
    if backend == "aiozmq":
        from .aiozmq_transport import AiozmqTransport
        return await AiozmqTransport.create("DEALER", endpoint, bind=False, options=options)
    from .pyzmq_transport import PyzmqTransport
    return PyzmqTransport("DEALER", endpoint, bind=False, options=options)
