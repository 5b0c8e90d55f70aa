"""The two messages that hand a same-node Ray rank its shared-memory fds (SCM_RIGHTS).

A rank's host connects to the executor's hand-off socket and says who it is
(``ShmHello``); the executor answers with the ring geometry (``ShmGrant``) and,
in the same datagram's ancillary data, the ring and wake-up fds in the order
of :data:`GRANT_FDS`. Nothing else ever crosses that socket.
"""

from __future__ import annotations

import msgspec

# The fds of a grant, in order (the fields of ``ShmEndpoint`` they become).
GRANT_FDS = ("call_ring", "call_wake", "call_thread_wake", "call_space", "reply_ring",
             "reply_wake", "reply_space")


class ShmHello(msgspec.Struct, tag="shm-hello", array_like=True, forbid_unknown_fields=True):
    """A host asks for ring ``slot``'s fds, proving with the executor's ``nonce`` that
    the executor sent it (the executor also checks the peer's pid and uid)."""

    nonce: bytes
    slot: int


class ShmGrant(msgspec.Struct, tag="shm-grant", array_like=True, forbid_unknown_fields=True):
    """The geometry of ring ``slot`` of ``ranks``; the fds travel beside it."""

    slot: int
    ranks: int
    call_capacity: int
    reply_capacity: int
