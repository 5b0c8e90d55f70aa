"""PeerOutbox on a real ROUTER: per-peer order, a peer that left, a socket that fails later."""

from __future__ import annotations

import asyncio

import pytest
import zmq

from actorexec.runtime.transport.peer_outbox import PeerOutbox

from .test_transport import endpoints  # noqa: F401  (fixture)


def router_and_dealer(endpoint: str, rcvhwm: int = 1000) -> tuple[zmq.Socket, zmq.Socket, bytes]:
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.SNDHWM, 10)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.RCVHWM, rcvhwm)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    dealer.send(b"hello")
    identity, _ = router.recv_multipart()
    return router, dealer, identity


def send_with(router: zmq.Socket):
    return lambda message: router.send_multipart(message, zmq.DONTWAIT)


@pytest.mark.timeout(30)
async def test_replies_to_a_full_pipe_wait_in_order_and_follow_once_it_drains(endpoints):  # noqa: F811
    router, dealer, peer = router_and_dealer(endpoints.ipc("r.sock"), rcvhwm=1)
    outbox = PeerOutbox(send_with(router), "test")
    try:
        for i in range(3000):
            outbox.send_to(peer, [b"%d" % i])
        assert outbox.queued(peer) > 0  # the pipe filled; the rest wait, in order
        got = []
        while len(got) < 3000:
            if dealer.poll(10):
                got.append(int(dealer.recv()))
            else:
                await asyncio.sleep(0.005)  # let the retry timer run
        assert got == list(range(3000)) and outbox.queued(peer) == 0
    finally:
        outbox.close()
        dealer.close()
        router.close()


@pytest.mark.timeout(30)
async def test_a_peer_that_left_loses_its_replies_and_a_failing_socket_is_reported(
        endpoints):  # noqa: F811
    router, dealer, peer = router_and_dealer(endpoints.ipc("r.sock"), rcvhwm=1)
    outbox = PeerOutbox(send_with(router), "test")
    try:
        dealer.close()
        await asyncio.sleep(0.2)  # ZeroMQ notices the disconnect
        outbox.send_to(peer, [b"to nobody"])  # EHOSTUNREACH: dropped, not raised
        assert outbox.queued(peer) == 0
        # A reply queued for a slow peer whose send later fails for another reason:
        slow = zmq.Context.instance().socket(zmq.DEALER)
        slow.setsockopt(zmq.RCVHWM, 1)
        slow.connect(endpoints.ipc("r.sock"))
        slow.send(b"hi")
        slow_peer, _ = router.recv_multipart()
        for _ in range(2000):
            outbox.send_to(slow_peer, [b"x" * 1024])
        assert outbox.queued(slow_peer) > 0
        router.close(linger=0)  # the next retry fails with ENOTSOCK
        with pytest.raises(zmq.ZMQError):
            await asyncio.wait_for(outbox.wait_failure(), 5)
        slow.close(linger=0)
    finally:
        outbox.close()
