"""Paced waits (``shm_spin.AdaptiveSpin.wake_at``): with regular long gaps between messages
a worker's work thread has its own timer wake it just before the next one comes, learns
arrivals from the ring's publish time, never polls for them, and sleeps for good once
traffic stops. Real memfd rings, eventfds and a real work thread."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from actorexec.runtime.transport import shm_spin
from actorexec.runtime.transport.shm_fds import MappedRing, new_eventfd
from actorexec.runtime.transport.shm_link import RingSender
from actorexec.runtime.transport.shm_ring_reader import RingReader
from actorexec.runtime.transport.shm_ring_writer import RingWriter
from actorexec.runtime.transport.shm_spin import PACE_LEAD_S, PACE_SPREAD_S, AdaptiveSpin
from actorexec.runtime.work_thread import WorkThread, precise_timers

from .ring_teardown import close_thread_then_ring

CAPACITY = 64 * 1024
PERIOD_S = 0.005  # a step every 5 ms, as an engine on a GPU sends them


class FakeClock:
    """``time.perf_counter`` for AdaptiveSpin, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(shm_spin, "time", fake)
    return fake


def _waits(spin: AdaptiveSpin, clock: FakeClock, waits: list[float]) -> None:
    for wait in waits:
        spin.waiting()
        clock.now += wait + 50e-6  # woken 50 µs after the message came
        spin.arrived(clock.now - 50e-6)  # the ring's publish time


def test_regular_long_waits_set_a_timer_just_before_the_expected_arrival(clock):
    spin = AdaptiveSpin(400e-6, paced=True)
    _waits(spin, clock, [PERIOD_S + d * 1e-6 for d in (0, 40, 10, 80, 20, 60, 30, 70)])
    assert spin.window() == 0  # long waits: no short wait after a message
    spin.waiting()
    # The 2nd-earliest arrival (10 µs: one outlier is ignored) less the lead; the publish
    # time, not the wake-up 50 µs later, is what was learnt.
    assert spin.wake_at() - clock.now == pytest.approx(PERIOD_S + 10e-6 - PACE_LEAD_S)
    assert spin.wake_at() is not None  # asking twice changes nothing


@pytest.mark.parametrize("waits, paced", [
    ([PERIOD_S] * 7, True),  # too few to know the rhythm
    ([PERIOD_S, PERIOD_S + 2 * PACE_SPREAD_S] * 4, True),  # irregular
    ([PERIOD_S] * 8, False),  # pacing off
    ([20e-6] * 8, True),  # short waits: the short wait's window instead
])
def test_no_timer_without_a_regular_rhythm(clock, waits, paced):
    spin = AdaptiveSpin(400e-6, paced=paced)
    _waits(spin, clock, waits)
    spin.waiting()
    assert spin.wake_at() is None


def test_no_timer_outside_a_wait(clock):
    spin = AdaptiveSpin(400e-6, paced=True)
    _waits(spin, clock, [PERIOD_S] * 8)
    assert spin.wake_at() is None  # the last wait ended; none began


def test_a_publish_time_outside_the_wait_counts_as_now(clock):
    """A stale publish time (an earlier message; the wake-up was for something else) says
    nothing about this wait."""
    spin = AdaptiveSpin(400e-6, paced=True)
    for _ in range(8):
        spin.waiting()
        clock.now += PERIOD_S
        spin.arrived(clock.now - 10.0)
    spin.waiting()
    assert spin.wake_at() - clock.now == pytest.approx(PERIOD_S - PACE_LEAD_S)


def test_the_ring_says_when_its_last_record_was_published():
    mapped = MappedRing.create("actorexec-test", CAPACITY, readers=1)
    try:
        writer, reader = RingWriter(mapped.ring), RingReader(mapped.ring, 0)
        before = time.perf_counter()
        ((parts, body, flags),) = writer.message_records([b"x"])
        assert writer.try_write(parts, body, flags, 1)
        assert before <= reader.published_s() <= time.perf_counter()
    finally:
        mapped.close()


def _thread_cpu_s(thread: threading.Thread) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


async def _run_periodic(paced: bool) -> tuple[int, int, float]:
    """Sends 60 messages to a work thread as an engine does with a GPU step of 5 ms: each
    one 5 ms after the work thread took the one before (its reply), from a writer thread
    with precise timers. Returns (paced wake-ups: the thread's timer woke it before the
    message came, messages taken, the work thread's CPU seconds over the half second of
    silence after them)."""
    mapped = MappedRing.create("actorexec-test", CAPACITY, readers=1)
    wake, space = new_eventfd(), new_eventfd()
    loop = asyncio.get_running_loop()
    sender = RingSender(mapped.ring, [[wake]], space, loop, "test ring")
    reader = RingReader(mapped.ring, 0)
    taken_at: list[float] = []  # when the work thread took each message: its "reply"

    def poll_once() -> bool:
        frames = reader.next_message()
        if frames is None:
            return False
        taken_at.append(time.perf_counter())
        for frame in frames:
            frame.release()
        reader.release()
        return True

    def write_periodically() -> None:
        precise_timers()
        for i in range(60):
            if i:
                while len(taken_at) < i:  # the reply to the last one
                    time.sleep(100e-6)
                # Sleeps (a spin would hold the GIL the work thread needs to poll).
                time.sleep(max(0.0, taken_at[i - 1] + PERIOD_S - time.perf_counter()))
            sender.send([i.to_bytes(4, "little")], 1)

    thread = WorkThread("test work thread")
    try:
        thread.watch(wake, poll_once, reader.pending, AdaptiveSpin(400e-6, paced),
                     lambda on: reader.set_polling(0, on), reader.published_s)
        await asyncio.to_thread(write_periodically)
        deadline = time.monotonic() + 5
        while len(taken_at) < 60 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        idle_from = _thread_cpu_s(thread._thread)
        await asyncio.sleep(0.5)
        idle_cpu = _thread_cpu_s(thread._thread) - idle_from
        return thread.paced_wakes, len(taken_at), idle_cpu
    finally:
        await close_thread_then_ring(thread, mapped, sender, wake, space)


async def test_a_regular_writer_finds_the_reader_awake_and_an_idle_one_sleeps():
    woken_ahead, taken, idle_cpu = await _run_periodic(True)
    assert taken == 60
    # After 8 messages the rhythm is known; for most later ones the thread's own timer
    # woke it first. Loose: a loaded machine's timers are late now and then.
    assert woken_ahead >= 52 * 3 // 4, f"woken ahead of only {woken_ahead} of 52 messages"
    # Never before the rhythm is known, once per message, and once more for a 61st
    # message that never comes (the silence after it is then slept through).
    assert woken_ahead <= 53
    assert idle_cpu < 0.01, f"the idle work thread used {idle_cpu * 1e3:.1f} ms of CPU in 0.5 s"


async def test_without_pacing_no_timer_wakes_the_reader():
    woken_ahead, taken, _ = await _run_periodic(False)
    assert (woken_ahead, taken) == (0, 60)
