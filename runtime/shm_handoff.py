"""Handing a ShmChannel's fds to a same-host process that is not our child (a Ray actor).

A spawned ``mp`` child inherits the ring and eventfd fds (shm_fds.py). A Ray
actor process on the driver's node is the raylet's child, not ours, so the
executor passes them explicitly: ``SCM_RIGHTS`` over a ``SOCK_SEQPACKET`` unix
socket that the executor listens on while its ranks start.

Why SCM_RIGHTS and not ``pidfd_getfd``: pidfd_getfd needs ptrace rights over
the fd's owner (denied between siblings wherever Yama's ptrace_scope is 1, the
usual default), and Python has no binding for it; a unix socket works for any
two processes of one user and is in the standard library
(``socket.send_fds``/``recv_fds``).

Why an abstract-namespace address (Linux) rather than a file in a 0700
directory: it has no name in the filesystem, so nothing can be left behind,
even when the executor is SIGKILLed while ranks start. A file's 0700
directory keeps other users out; here the executor checks every peer instead,
before it sends anything: the kernel's ``SO_PEERCRED`` must show our uid and
the very pid Ray reported for that rank's host, and the host must present the
executor's 32-byte random nonce (given to it through Ray, compared in
constant time) for a ring slot not yet handed out. Anyone else is logged and
hung up on. The address itself is random too.

The connection is then kept as the rank's *lifeline*: the host closes it when
it stops serving (the kernel closes it when the process dies), so the
executor sees an orderly or fatal stop at once, as a tcp rank's closed
connection shows it (the death watch itself is a pidfd: shm_remote_ref.py).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import socket
import struct
from dataclasses import dataclass

import msgspec

from actorexec.protocol.errors import ProtocolError
from actorexec.protocol.handoff import GRANT_FDS, ShmGrant, ShmHello

from .transport.shm_channel import ShmChannel, ShmEndpoint
from .transport.shm_fds import InheritedFd, close_fds, shm_available

logger = logging.getLogger("actorexec.runtime.shm_handoff")

MAX_MESSAGE = 256  # bytes: a hello or a grant is well under 100
HELLO_TIMEOUT_S = 5.0  # a connected peer that says nothing is hung up on after this
_PEERCRED = struct.Struct("3i")  # pid, uid, gid
_HELLO = msgspec.msgpack.Decoder(ShmHello)
_GRANT = msgspec.msgpack.Decoder(ShmGrant)


def handoff_available() -> bool:
    """Shared memory, fd passing and pidfds all exist here (Linux)."""
    return (shm_available() and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")
            and hasattr(socket, "SO_PEERCRED"))


class HandoffRefused(Exception):
    """A peer of the hand-off socket that is not the rank it claims to be."""


@dataclass
class HostLine:
    """What the executor keeps of a granted host: the lifeline and a pidfd of its process."""

    lifeline: socket.socket
    pidfd: int
    pid: int

    def close(self) -> None:
        self.lifeline.close()
        close_fds(self.pidfd)


class ShmHandoff:
    """The executor's end: gives ring slot ``s`` of ``channel`` to the process whose pid
    is ``pids[s]``, once. Bound at construction (hosts may connect before
    :meth:`hand_out` runs: the kernel queues them); :meth:`close` stops listening."""

    def __init__(self, channel: ShmChannel) -> None:
        self.channel = channel
        self.nonce = secrets.token_bytes(32)
        self.address = f"actorexec-shm-{os.getpid()}-{secrets.token_hex(16)}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._sock.bind("\0" + self.address)  # abstract namespace: no file anywhere
            self._sock.listen(channel.ranks + 4)
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise

    async def hand_out(self, pids: dict[int, int], timeout_s: float) -> dict[int, HostLine]:
        """Serves the hand-off until every slot of ``pids`` (slot -> host pid) has its fds;
        returns each slot's :class:`HostLine`. TimeoutError names the slots still waiting."""
        loop = asyncio.get_running_loop()
        granted: dict[int, HostLine] = {}
        try:
            async with asyncio.timeout(timeout_s):
                while len(granted) < len(pids):
                    conn, _ = await loop.sock_accept(self._sock)
                    try:
                        slot, line = await self._grant(conn, pids, granted)
                    except (HandoffRefused, OSError, TimeoutError) as exc:
                        logger.warning("shared-memory hand-off refused a peer: %s", exc)
                        conn.close()
                        continue
                    granted[slot] = line
        except TimeoutError:
            for line in granted.values():
                line.close()
            missing = sorted(set(pids) - set(granted))
            raise TimeoutError(f"ring slot(s) {missing} did not collect their shared-memory "
                               f"fds within {timeout_s} s") from None
        except BaseException:
            for line in granted.values():
                line.close()
            raise
        return granted

    async def _grant(self, conn: socket.socket, pids: dict[int, int],
                     granted: dict[int, HostLine]) -> tuple[int, HostLine]:
        pid, uid, _ = _PEERCRED.unpack(conn.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(conn, MAX_MESSAGE),
                                      HELLO_TIMEOUT_S)
        try:
            hello = _HELLO.decode(data)
        except msgspec.DecodeError as exc:
            raise HandoffRefused(f"pid {pid}: undecodable hello: {exc}") from None
        if not hmac.compare_digest(hello.nonce, self.nonce):
            raise HandoffRefused(f"pid {pid}: wrong nonce")
        if hello.slot not in pids or hello.slot in granted:
            raise HandoffRefused(f"pid {pid}: slot {hello.slot} is not waiting for its fds")
        if uid != os.getuid() or pid != pids[hello.slot]:
            raise HandoffRefused(f"pid {pid} (uid {uid}) claims slot {hello.slot}, which "
                                 f"belongs to pid {pids[hello.slot]} (uid {os.getuid()})")
        pidfd = os.pidfd_open(pid)  # it is connected, so alive (or a zombie: still its pid)
        endpoint = self.channel.endpoint(hello.slot)
        grant = ShmGrant(hello.slot, endpoint.ranks, endpoint.call_capacity,
                         endpoint.reply_capacity)
        try:
            socket.send_fds(conn, [msgspec.msgpack.encode(grant)],
                            [getattr(endpoint, name).fd for name in GRANT_FDS])
        except BaseException:
            close_fds(pidfd)
            raise
        return hello.slot, HostLine(conn, pidfd, pid)

    def close(self) -> None:
        self._sock.close()


def _recv_with_fds(sock: socket.socket, max_fds: int) -> tuple[bytes, list[int], int]:
    """One message and the fds beside it, received close-on-exec (so a program the host
    starts inherits none). ``socket.recv_fds`` ignores its flags argument (Python 3.11)."""
    fds = array.array("i")
    msg, ancdata, flags, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(max_fds * fds.itemsize),
                                          socket.MSG_CMSG_CLOEXEC)
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return msg, list(fds), flags


def receive_endpoint(address: str, nonce: bytes, slot: int,
                     timeout_s: float) -> tuple[ShmEndpoint, socket.socket]:
    """The host's end (blocking): asks the executor at ``address`` for ring ``slot``;
    returns the endpoint to attach and the lifeline, to close when serving ends."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.settimeout(timeout_s)
        sock.connect("\0" + address)
        sock.send(msgspec.msgpack.encode(ShmHello(nonce, slot)))
        msg, fds, flags = _recv_with_fds(sock, len(GRANT_FDS))
        try:
            if not msg:
                raise ConnectionError(f"the executor refused ring slot {slot} (hung up)")
            if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(fds) != len(GRANT_FDS):
                raise ProtocolError(f"a shared-memory grant with {len(fds)} fds "
                                    f"(flags {flags:#x}); expected {len(GRANT_FDS)}")
            try:
                grant = _GRANT.decode(msg)
            except msgspec.DecodeError as exc:
                raise ProtocolError(f"undecodable shared-memory grant: {exc}") from None
            if grant.slot != slot:
                raise ProtocolError(f"asked for ring slot {slot}, granted {grant.slot}")
        except BaseException:
            close_fds(*fds)
            raise
        fd = {name: InheritedFd(f) for name, f in zip(GRANT_FDS, fds, strict=True)}
        endpoint = ShmEndpoint(rank=slot, ranks=grant.ranks, call_capacity=grant.call_capacity,
                               reply_capacity=grant.reply_capacity, **fd)
        sock.settimeout(None)
        return endpoint, sock
    except BaseException:
        with contextlib.suppress(OSError):
            sock.close()
        raise
