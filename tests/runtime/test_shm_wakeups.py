"""Skipped wake-ups (the polling flag, ``shm_ring.py``): a writer in another process skips the
eventfd of a reader that polls, and no wake-up is ever lost at the moment a reader stops
polling. Real memfd memory, eventfds and two processes on real cores."""

from __future__ import annotations

import asyncio
import os
import random
import select
import threading
import time

import pytest

from actorexec.runtime import work_thread
from actorexec.runtime.transport import shm_spin
from actorexec.runtime.transport.shm_fds import MappedRing, close_fds, drain, new_eventfd
from actorexec.runtime.transport.shm_link import RingReceiver, RingSender
from actorexec.runtime.transport.shm_ring_reader import RingReader
from actorexec.runtime.transport.shm_ring_writer import RingWriter
from actorexec.runtime.transport.shm_spin import AdaptiveSpin
from actorexec.runtime.work_thread import WorkThread

from .ring_teardown import close_thread_then_ring

CAPACITY = 64 * 1024
MESSAGES = 3000
WINDOW_S = 100e-6
ACK_TIMEOUT_S = 5.0  # a lost wake-up leaves the reader asleep for good: far above any delay


class FixedSpin(AdaptiveSpin):
    """Polls for exactly ``window_s`` after each message, so that the writer's pauses (around
    that long) often end just as polling does: the moment a lost wake-up would happen."""

    def __init__(self, window_s: float) -> None:
        super().__init__(window_s)
        self.fixed_window = window_s

    def window(self) -> float:
        return self.fixed_window


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


async def test_the_writer_skips_the_signal_only_while_the_reader_polls():
    mapped = MappedRing.create("actorexec-test", CAPACITY, readers=2)
    fds = [new_eventfd() for _ in range(5)]
    loop = asyncio.get_running_loop()
    sender = RingSender(mapped.ring, [[fds[0], fds[1]], [fds[2]]], fds[4], loop, "test ring")
    reader0, reader1 = RingReader(mapped.ring, 0), RingReader(mapped.ring, 1)
    try:
        reader0.set_polling(1, True)  # reader 0's second lane polls; nothing else does
        sender.send([b"a"], 0b11, lane=1)
        assert not _readable(fds[1])  # skipped: that lane polls
        assert _readable(fds[2])  # reader 1 has one lane, which does not poll
        sender.send([b"b"], 0b01, lane=0)
        assert _readable(fds[0])  # reader 0's first lane does not poll
        reader0.set_polling(1, False)
        sender.send([b"c"], 0b01, lane=1)
        assert _readable(fds[1])
        assert [bytes(f[0]) for f in iter(reader0.next_message, None)] == [b"a", b"b", b"c"]
        assert bytes(reader1.next_message()[0]) == b"a"
    finally:
        sender.close()
        mapped.close()
        close_fds(*fds)


async def _until(condition, timeout_s: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.001)
    return condition()


@pytest.fixture
def no_backstop(monkeypatch):
    """The backstop look far away: what is read in time was read by the last look."""
    monkeypatch.setattr(shm_spin, "BACKSTOP_S", 60.0)
    monkeypatch.setattr(work_thread, "BACKSTOP_S", 60.0)


async def test_a_message_published_as_the_loop_stops_polling_is_read_by_its_last_look(
        no_backstop):
    """The writer publishes exactly between the reader's last poll and its clearing the flag,
    so it sees the flag set and does not signal: only the reader's last look finds it."""
    mapped = MappedRing.create("actorexec-test", CAPACITY, readers=1)
    wake, space = new_eventfd(), new_eventfd()
    loop = asyncio.get_running_loop()
    sender = RingSender(mapped.ring, [[wake]], space, loop, "test ring")
    receiver = RingReceiver(mapped.ring, 0, wake, space, loop, "test ring", FixedSpin(0.002))
    got: list[bytes] = []
    set_polling = receiver.set_polling

    def publish_as_polling_ends(lane: int, polling: bool) -> None:
        if not polling and not got:
            sender.send([b"late"], 1)
            assert not _readable(wake)  # skipped: the flag is still set
        set_polling(lane, polling)

    receiver.set_polling = publish_as_polling_ends  # type: ignore[method-assign]
    try:
        receiver.start(lambda frames: got.append(bytes(frames[0])))
        assert await _until(lambda: got == [b"late"])
    finally:
        receiver.close()
        sender.close()
        mapped.close()
        close_fds(wake, space)


def take_one(reader: RingReader, got: list[bytes]) -> bool:
    """Takes the next message's first frame into ``got``; False if the ring is empty."""
    frames = reader.next_message()
    if frames is None:
        return False
    got.append(bytes(frames[0]))
    frames[0].release()
    reader.release()
    return True


async def test_a_message_published_as_the_work_thread_stops_polling_is_taken(no_backstop):
    mapped = MappedRing.create("actorexec-test", CAPACITY, readers=1)
    wake, space = new_eventfd(), new_eventfd()
    sender = RingSender(mapped.ring, [[wake]], space, asyncio.get_running_loop(), "test ring")
    reader = RingReader(mapped.ring, 0)
    got: list[bytes] = []

    def poll_once() -> bool:
        return take_one(reader, got)

    ends = []

    def publish_as_polling_ends(polling: bool) -> None:
        if not polling:
            ends.append(1)
            if len(ends) == 2:  # the first sleep returns at once (watch() wakes the thread)
                sender.send([b"late"], 1)
                assert not _readable(wake)
        reader.set_polling(0, polling)

    thread = WorkThread("test work thread")
    try:
        thread.watch(wake, poll_once, reader.pending, FixedSpin(0.002), publish_as_polling_ends)
        assert await _until(lambda: got == [b"late"])
    finally:
        await close_thread_then_ring(thread, mapped, sender, wake, space)


def _write_unsignalled(writer: RingWriter, frame: bytes) -> None:
    """What a lost wake-up leaves: a record published, no eventfd signalled."""
    ((parts, body, flags),) = writer.message_records([frame])
    assert writer.try_write(parts, body, flags, 1)


async def test_a_wake_up_lost_after_the_loop_polled_is_found_by_the_backstop(monkeypatch):
    """Should a processor reorder the flag protocol (not x86), a record can be missed by
    the last look and not signalled: one more look a little later still finds it."""
    monkeypatch.setattr(shm_spin, "BACKSTOP_S", 0.3)
    mapped = MappedRing.create("actorexec-test", CAPACITY, readers=1)
    wake, space = new_eventfd(), new_eventfd()
    loop = asyncio.get_running_loop()
    receiver = RingReceiver(mapped.ring, 0, wake, space, loop, "test ring", FixedSpin(0.002))
    writer = RingWriter(mapped.ring)
    got: list[bytes] = []
    set_polling = receiver.set_polling

    def miss_after_the_last_look(lane: int, polling: bool) -> None:
        set_polling(lane, polling)
        if not polling and not got:  # runs right after the last look
            loop.call_soon(_write_unsignalled, writer, b"missed")

    receiver.set_polling = miss_after_the_last_look  # type: ignore[method-assign]
    try:
        receiver.start(lambda frames: got.append(bytes(frames[0])))
        assert await _until(lambda: got == [b"missed"], timeout_s=5.0)
    finally:
        receiver.close()
        mapped.close()
        close_fds(wake, space)


async def test_a_wake_up_lost_after_the_work_thread_polled_is_found_by_the_backstop(
        monkeypatch):
    monkeypatch.setattr(work_thread, "BACKSTOP_S", 0.3)
    mapped = MappedRing.create("actorexec-test", CAPACITY, readers=1)
    wake = new_eventfd()
    reader = RingReader(mapped.ring, 0)
    writer = RingWriter(mapped.ring)
    got: list[bytes] = []
    ends = []

    def poll_once() -> bool:
        return take_one(reader, got)

    def miss_after_polling(polling: bool) -> None:
        reader.set_polling(0, polling)
        if not polling:
            ends.append(1)
            if len(ends) == 2:  # the thread is about to sleep with the backstop armed
                threading.Timer(0.05, _write_unsignalled, (writer, b"missed")).start()

    thread = WorkThread("test work thread")
    try:
        thread.watch(wake, poll_once, reader.pending, FixedSpin(0.002), miss_after_polling)
        assert await _until(lambda: got == [b"missed"], timeout_s=5.0)
    finally:
        await close_thread_then_ring(thread, mapped, None, wake)


async def test_a_reader_has_at_most_as_many_lanes_as_its_line_has_polling_flags():
    mapped = MappedRing.create("actorexec-test", CAPACITY, readers=1)
    fds = [new_eventfd() for _ in range(4)]
    try:
        with pytest.raises(ValueError, match="wake-up lanes"):
            RingSender(mapped.ring, [fds[:3]], fds[3], asyncio.get_running_loop(), "test ring")
    finally:
        mapped.close()
        close_fds(*fds)


def _ping_writer(mapped: MappedRing, wake: int, space: int, ack: int, seed: int) -> int:
    """In a forked child: send MESSAGES messages, each after a random pause, each only once
    the reader acknowledged the previous one; 3 if an acknowledgement never comes."""
    rng = random.Random(seed)
    loop = asyncio.new_event_loop()
    sender = RingSender(mapped.ring, [[wake]], space, loop, "test ring")
    for i in range(MESSAGES):
        pause = rng.uniform(0.3, 1.7) * WINDOW_S  # around the end of the reader's window
        until = time.perf_counter() + pause
        while time.perf_counter() < until:  # busy: the reader's window may end at any moment
            pass
        sender.send([i.to_bytes(4, "little")], 1)
        if not select.select([ack], [], [], ACK_TIMEOUT_S)[0]:
            return 3
        drain(ack)
    return 0


def _fork_writer(mapped: MappedRing, wake: int, space: int, ack: int) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = _ping_writer(mapped, wake, space, ack, seed=os.getpid())
        finally:
            os._exit(code)
    return pid


async def _child_exit(pid: int) -> int:
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        await asyncio.sleep(0.01)


@pytest.mark.timeout(120)
async def test_no_wake_up_is_lost_when_the_loop_stops_polling():
    """Ping-pong: each message is the writer's last until acknowledged, so a wake-up lost
    when the reader's short wait ends would leave both waiting (the child exits 3)."""
    mapped = MappedRing.create("actorexec-test", CAPACITY, readers=1)
    wake, space, ack = new_eventfd(), new_eventfd(), new_eventfd()
    loop = asyncio.get_running_loop()
    receiver = RingReceiver(mapped.ring, 0, wake, space, loop, "test ring",
                            FixedSpin(WINDOW_S))
    got: list[int] = []

    def deliver(frames: list[memoryview]) -> None:
        got.append(int.from_bytes(frames[0], "little"))
        os.write(ack, (1).to_bytes(8, "little"))

    pid = _fork_writer(mapped, wake, space, ack)
    try:
        receiver.start(deliver)
        assert await asyncio.wait_for(_child_exit(pid), 100) == 0, f"lost after {len(got)}"
        assert got == list(range(MESSAGES))
    finally:
        receiver.close()
        mapped.close()
        close_fds(wake, space, ack)


@pytest.mark.timeout(120)
async def test_no_wake_up_is_lost_when_the_work_thread_stops_polling():
    mapped = MappedRing.create("actorexec-test", CAPACITY, readers=1)
    wake, space, ack = new_eventfd(), new_eventfd(), new_eventfd()
    reader = RingReader(mapped.ring, 0)
    got: list[int] = []

    def poll_once() -> bool:
        frames = reader.next_message()
        if frames is None:
            return False
        got.append(int.from_bytes(frames[0], "little"))
        for frame in frames:
            frame.release()
        reader.release()
        os.write(ack, (1).to_bytes(8, "little"))
        return True

    thread = WorkThread("test work thread")
    pid = _fork_writer(mapped, wake, space, ack)
    try:
        thread.watch(wake, poll_once, reader.pending, FixedSpin(WINDOW_S),
                     lambda on: reader.set_polling(0, on))
        assert await asyncio.wait_for(_child_exit(pid), 100) == 0, f"lost after {len(got)}"
        assert got == list(range(MESSAGES))
    finally:
        await close_thread_then_ring(thread, mapped, None, wake, space, ack)
