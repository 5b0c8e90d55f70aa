"""Handing a ShmChannel's fds to a process that is not our child (SCM_RIGHTS), and the
death watch of such a process (pidfd + lifeline).

The peers here are threads of this process (the hand-off checks the peer's pid:
the expected pid is this process's where a peer should be granted); the Ray
tests run the same with real Ray actor processes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import pytest

from actorexec.runtime.shm_handoff import (
    HostLine,
    ShmHandoff,
    handoff_available,
    receive_endpoint,
)
from actorexec.runtime.shm_remote_ref import PROCESS_EXITED, STOPPED_SERVING, HostWatch
from actorexec.runtime.transport.shm_channel import ShmChannel
from actorexec.runtime.transport.shm_fds import close_fds

pytestmark = pytest.mark.skipif(not handoff_available(), reason="needs Linux memfd, pidfd")


@pytest.fixture
def channel():
    channel = ShmChannel(2, call_capacity=1 << 16, reply_capacity=1 << 16)
    yield channel
    channel.close()


def same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


@pytest.mark.timeout(30)
async def test_a_peer_with_the_nonce_gets_its_slots_very_rings_and_one_without_is_hung_up_on(
        channel):
    handoff = ShmHandoff(channel)
    try:
        serving = asyncio.ensure_future(handoff.hand_out({1: os.getpid()}, 10))
        with pytest.raises(ConnectionError, match="refused ring slot 1"):
            await asyncio.to_thread(receive_endpoint, handoff.address, b"x" * 32, 1, 5)
        endpoint, lifeline = await asyncio.to_thread(
            receive_endpoint, handoff.address, handoff.nonce, 1, 5)
        lines = await serving
    finally:
        handoff.close()
    try:
        assert list(lines) == [1] and lines[1].pid == os.getpid()
        assert endpoint.rank == 1 and endpoint.ranks == 2
        assert same_file(endpoint.call_ring.fd, channel.call_ring.fd)
        assert same_file(endpoint.reply_ring.fd, channel.reply_rings[1].fd)
        assert same_file(endpoint.call_thread_wake.fd, channel.call_wake[1][1])
        assert endpoint.call_capacity == channel.call_ring.capacity
        assert os.get_inheritable(endpoint.call_ring.fd) is False  # arrived close-on-exec
    finally:
        lifeline.close()
        close_fds(*(getattr(endpoint, name).fd for name in (
            "call_ring", "call_wake", "call_thread_wake", "call_space", "reply_ring",
            "reply_wake", "reply_space")))
        lines[1].close()


@pytest.mark.timeout(30)
async def test_the_right_nonce_from_the_wrong_process_gets_nothing_and_start_times_out(
        channel):
    handoff = ShmHandoff(channel)
    try:
        # Slot 0 belongs to another process (our parent, say): we are refused.
        serving = asyncio.ensure_future(handoff.hand_out({0: os.getppid()}, 1.0))
        with pytest.raises(ConnectionError):
            await asyncio.to_thread(receive_endpoint, handoff.address, handoff.nonce, 0, 5)
        with pytest.raises(TimeoutError, match=r"ring slot\(s\) \[0\] did not collect"):
            await serving
    finally:
        handoff.close()


@pytest.mark.timeout(30)
async def test_the_watch_fires_once_when_the_process_exits_or_closes_its_lifeline():
    fired: list[tuple[str, float]] = []
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    watch = HostWatch(HostLine(ours, os.pidfd_open(child.pid), child.pid),
                      lambda cause: fired.append((cause, time.monotonic())))
    try:
        await asyncio.sleep(0.1)
        assert fired == []
        killed_at = time.monotonic()
        child.kill()
        while not fired and time.monotonic() - killed_at < 2:
            await asyncio.sleep(0.01)
        assert [cause for cause, _ in fired] == [PROCESS_EXITED]
        assert fired[0][1] - killed_at < 1.0
        theirs.close()  # after the first sign, nothing more
        await asyncio.sleep(0.1)
        assert len(fired) == 1
    finally:
        watch.close()
        child.wait()
        theirs.close()
    assert ours.fileno() == -1  # the watch closed the lifeline (and the pidfd)

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    watch = HostWatch(HostLine(ours, os.pidfd_open(os.getpid()), os.getpid()),
                      lambda cause: fired.append((cause, time.monotonic())))
    theirs.close()  # the host stopped serving: its process lives on
    await asyncio.sleep(0.1)
    watch.close()
    assert [cause for cause, _ in fired[1:]] == [STOPPED_SERVING]
