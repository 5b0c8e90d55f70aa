"""RemoteRef: an actor in a process we do not own, seen only through its tcp connection.

The process here is a real actor process on 127.0.0.1 (started and owned by a
ProcessRef, as a cluster manager would own it); the RemoteRef under test is a
second peer that knows only its endpoint. Its death is seen from the socket:
a killed process within well under a second, a frozen host (SIGSTOP: no ZMTP
heartbeat answers) within three heartbeat intervals.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from actorexec.protocol import ActorClosedError, ActorDiedError
from actorexec.runtime import PreparedCall, RemoteRef, spawn_actor
from actorexec.runtime.endpoints import tcp

from .actors import Counter
from .test_transport import BACKENDS, COUNTER

SPECS = Counter.method_specs()


async def remote_pair(backend: str, heartbeat_s: float = 0.25):
    endpoint = tcp("127.0.0.1")
    owner = await spawn_actor(COUNTER, {"start": 0}, rank=0, endpoint=endpoint, backend=backend)
    deaths: list[BaseException] = []
    ref = await RemoteRef.connect(endpoint, rank=3, pid=owner.pid, node="127.0.0.1",
                                  kill=owner.kill_now, backend=backend, heartbeat_s=heartbeat_s,
                                  on_death=lambda _ref, exc: deaths.append(exc))
    await ref.wait_ready(10)
    return owner, ref, deaths


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.timeout(60)
async def test_a_killed_remote_process_fails_pending_calls_naming_rank_pid_and_node(backend):
    owner, ref, deaths = await remote_pair(backend)
    try:
        assert await ref.submit(PreparedCall("incr", SPECS["incr"], (2,))) == 2
        pending = [ref.submit(PreparedCall("nap", SPECS["nap"], (30.0,))) for _ in range(3)]
        await asyncio.sleep(0.1)
        killed_at = time.monotonic()
        os.kill(owner.pid, signal.SIGKILL)
        for fut in pending:
            with pytest.raises(ActorDiedError) as info:
                await asyncio.wait_for(fut, 5)
            assert info.value.rank == 3 and info.value.pid == owner.pid
            assert info.value.node == "127.0.0.1"
            assert "connection closed" in str(info.value) and "127.0.0.1" in str(info.value)
        assert time.monotonic() - killed_at < 1.0
        assert len(deaths) == 1 and isinstance(deaths[0], ActorDiedError)
        with pytest.raises(ActorDiedError):  # later calls fail at once
            await ref.submit(PreparedCall("incr", SPECS["incr"], (1,)))
    finally:
        ref.close_now()
        owner.kill_now()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.timeout(60)
async def test_a_frozen_host_is_seen_through_missing_heartbeats_within_three_intervals(backend):
    # SIGSTOP freezes every thread, libzmq's I/O thread included: no FIN, no PONG; only
    # the heartbeat can tell. 0.2 s interval: dropped after 0.6 s of silence.
    owner, ref, deaths = await remote_pair(backend, heartbeat_s=0.2)
    try:
        pending = ref.submit(PreparedCall("nap", SPECS["nap"], (30.0,)))
        await asyncio.sleep(0.1)
        frozen_at = time.monotonic()
        os.kill(owner.pid, signal.SIGSTOP)
        with pytest.raises(ActorDiedError, match="connection closed"):
            await asyncio.wait_for(pending, 5)
        assert time.monotonic() - frozen_at < 1.5
        assert len(deaths) == 1
    finally:
        os.kill(owner.pid, signal.SIGCONT)
        ref.close_now()
        owner.kill_now()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.timeout(60)
async def test_a_busy_remote_actor_is_not_taken_for_dead(backend):
    owner, ref, deaths = await remote_pair(backend, heartbeat_s=0.1)
    try:
        # Two seconds on the work thread: heartbeats are answered by libzmq, not Python.
        assert await ref.submit(PreparedCall("nap", SPECS["nap"], (2.0,))) == 2.0
        assert deaths == [] and ref.dead is None
    finally:
        ref.close_now()
        owner.kill_now()


@pytest.mark.timeout(60)
async def test_an_orderly_shutdown_is_not_a_death_and_close_returns_when_the_actor_left():
    owner, ref, deaths = await remote_pair("aiozmq")
    try:
        assert await ref.submit(PreparedCall("shutdown", SPECS["shutdown"])) is None
        start = time.monotonic()
        await ref.close(grace_s=5.0)
        assert time.monotonic() - start < 2.0 and deaths == []
        with pytest.raises(ActorClosedError):
            await ref.submit(PreparedCall("incr", SPECS["incr"], (1,)))
    finally:
        owner.kill_now()
