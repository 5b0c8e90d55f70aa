"""Every task of an actor has an owner: if one fails, the actor stops loudly and its
callers get a typed error within a second (never a silent hang)."""

from __future__ import annotations

import asyncio
import time

import pytest

from actorexec.protocol import ActorDiedError
from actorexec.runtime import PreparedCall, spawn_actor

from .actors import Counter
from .test_transport import BACKENDS, COUNTER, endpoints  # noqa: F401  (fixture)

SPECS = Counter.method_specs()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.timeout(60)
async def test_a_reply_that_cannot_be_sent_stops_the_actor_and_fails_its_callers_within_a_second(
        backend, endpoints):  # noqa: F811
    ref = await spawn_actor(COUNTER, {"start": 0}, rank=0, endpoint=endpoints.ipc("c.sock"),
                            backend=backend)
    try:
        assert await ref.submit(PreparedCall("incr", SPECS["incr"], (1,))) == 1
        start = time.monotonic()
        # Its own reply is the first that cannot be sent.
        with pytest.raises(ActorDiedError, match="rank 0"):
            await asyncio.wait_for(ref.submit(PreparedCall("break_replies",
                                                           SPECS["break_replies"])), 5)
        assert time.monotonic() - start < 1.0
        await asyncio.wait_for(ref.exited.wait(), 5)
        assert ref.process.exitcode not in (0, None)  # loudly: the death watch fired
    finally:
        ref.kill_now()
