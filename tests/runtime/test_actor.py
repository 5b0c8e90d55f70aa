"""The actor base: where methods run, replying later, lifecycle phases, owned tasks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import pytest

from actorexec.protocol import ActorClosedError
from actorexec.runtime import ActorFatalError, LocalRef, PreparedCall, expose
from actorexec.runtime.actor import Actor


class Placed(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.stopped_cleanly = False
        self.fail_background_after_s: float | None = None

    @expose
    def on_loop(self) -> int:
        return threading.get_ident()

    @expose(thread=True)
    def on_thread(self, seconds: float = 0.0) -> int:
        time.sleep(seconds)
        return threading.get_ident()

    @expose(thread=True)
    def later(self, value: int, after_s: float) -> int:
        done: concurrent.futures.Future[int] = concurrent.futures.Future()
        threading.Timer(after_s, done.set_result, (value,)).start()
        return done  # type: ignore[return-value]  # reply later, with an int

    @expose(ordered=False)
    def probe(self) -> str | None:
        status = self.work_status()
        return None if status is None else status.method

    @expose
    async def forever(self) -> None:
        await asyncio.Event().wait()

    async def background(self) -> None:
        if self.fail_background_after_s is not None:
            await asyncio.sleep(self.fail_background_after_s)
            raise RuntimeError("the watchdog fired")

    async def on_stop(self) -> None:
        self.stopped_cleanly = True


class Override(Placed):
    def on_thread(self, seconds: float = 0.0) -> int:  # undecorated: still on the thread
        return threading.get_ident()


class Forgetful(Actor):
    def __init__(self) -> None:  # no super().__init__()
        self.x = 1


SPECS = Placed.method_specs()


def call(ref: LocalRef, method: str, *args: object) -> asyncio.Future[object]:
    return ref.submit(PreparedCall(method, SPECS[method], args))


async def started(actor: Placed) -> LocalRef:
    ref = LocalRef(actor)
    await ref.start()
    return ref


async def test_the_decorator_says_where_a_method_runs_and_overrides_keep_it():
    for actor in (Placed(), Override()):
        ref = await started(actor)
        try:
            assert await call(ref, "on_loop") == threading.get_ident()
            assert await call(ref, "on_thread") != threading.get_ident()
        finally:
            await ref.close()


@pytest.mark.timeout(30)
async def test_a_thread_method_may_reply_later_while_the_thread_takes_the_next_call():
    ref = await started(Placed())
    try:
        start = time.monotonic()
        first = call(ref, "later", 7, 1.0)
        second = call(ref, "on_thread", 0.8)  # runs while the first reply is still pending
        order: list[str] = []
        first.add_done_callback(lambda _: order.append("first"))
        second.add_done_callback(lambda _: order.append("second"))
        assert await first == 7
        await second
        await asyncio.sleep(0)  # let the done callbacks run
        assert order == ["first", "second"]  # the second finished first, but replies keep order
        assert time.monotonic() - start < 1.6  # 1.8 s if the thread had waited for the reply
    finally:
        await ref.close()


@pytest.mark.timeout(30)
async def test_an_unordered_probe_answers_while_the_work_thread_is_busy():
    ref = await started(Placed())
    try:
        busy = call(ref, "on_thread", 2.0)
        await asyncio.sleep(0.3)
        start = time.monotonic()
        assert await call(ref, "probe") == "on_thread"
        assert time.monotonic() - start < 1.0 and not busy.done()
        await busy
    finally:
        await ref.close()


async def test_an_actor_that_skips_super_init_is_refused_when_hosted():
    with pytest.raises(TypeError, match=r"super\(\)\.__init__"):
        LocalRef(Forgetful())


async def test_the_lifecycle_runs_in_named_phases():
    actor = Placed()
    assert actor.phase == "created"
    ref = await started(actor)
    assert actor.phase == "running"
    stop = ref.submit(PreparedCall("shutdown", SPECS["shutdown"]))
    after = call(ref, "on_loop")  # sent after the shutdown: refused, never left waiting
    await stop
    with pytest.raises(ActorClosedError):
        await asyncio.wait_for(after, 1.0)
    await ref.close()
    assert actor.phase == "stopped" and actor.stopped_cleanly


@pytest.mark.timeout(30)
async def test_a_failing_background_task_stops_the_actor_and_fails_its_callers_at_once():
    actor = Placed()
    actor.fail_background_after_s = 0.3
    deaths: list[BaseException] = []
    ref = LocalRef(actor, on_death=lambda r, e: deaths.append(e))
    await ref.start()
    try:
        pending = call(ref, "forever")
        with pytest.raises(ActorFatalError, match="watchdog fired"):
            await asyncio.wait_for(pending, 1.3)
        # The mailbox fails its callers first; the ref reports the death when the mailbox's
        # task has ended, a loop turn or two later (Python 3.12's wait_for resumes the
        # caller without the extra task hop that hid this on 3.11).
        async with asyncio.timeout(1.0):
            while not deaths:
                await asyncio.sleep(0)
        assert len(deaths) == 1 and isinstance(deaths[0], ActorFatalError)
        assert actor.phase == "stopped" and not actor.stopped_cleanly
        with pytest.raises(ActorFatalError):
            await call(ref, "on_loop")  # later calls fail at once
    finally:
        await ref.close()
