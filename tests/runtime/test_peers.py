"""One actor, several peers: a peer that misbehaves never delays or kills the others."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
import zmq

from actorexec.protocol import Call, EnvelopeCodec
from actorexec.runtime import PreparedCall, spawn_actor

from .actors import Counter
from .test_transport import BACKENDS, COUNTER, endpoints  # noqa: F401  (fixture)

SPECS = Counter.method_specs()
FLOOD = 3000  # replies of 4 KiB: well past a ROUTER pipe's 1,000-message high-water mark


def flood_without_reading(endpoint: str) -> zmq.Socket:
    """A raw DEALER that sends FLOOD calls and never reads a reply (its pipe fills)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.SNDTIMEO, 10_000)  # never block the test for ever
    sock.connect(endpoint)
    codec = EnvelopeCodec()
    payload = msgspec.msgpack.encode({"data": b"x" * 4096})
    for i in range(FLOOD):
        sock.send_multipart([codec.encode(Call(i + 1, "echo")), payload])
    return sock


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.timeout(90)
async def test_a_peer_that_never_reads_delays_no_other_peer_and_leaving_is_not_fatal(
        backend, endpoints):  # noqa: F811
    endpoint = endpoints.ipc("a.sock")
    ref = await spawn_actor(COUNTER, {"start": 0}, rank=0, endpoint=endpoint, backend=backend)
    incr = PreparedCall("incr", SPECS["incr"], (1,))
    try:
        flooder = flood_without_reading(endpoint)
        # Queued behind the flood in the mailbox, so it is answered after every flood
        # reply was attempted: it must not wait behind the peer's full pipe.
        assert await asyncio.wait_for(ref.submit(incr), 20) == 1
        for n in range(2, 12):
            start = time.monotonic()
            assert await asyncio.wait_for(ref.submit(incr), 5) == n
            assert time.monotonic() - start < 1.0
        flooder.close(linger=0)  # the peer vanishes with its replies still queued
        await asyncio.sleep(0.5)
        assert await asyncio.wait_for(ref.submit(incr), 5) == 12
        assert ref.process.exitcode is None
    finally:
        ref.kill_now()
