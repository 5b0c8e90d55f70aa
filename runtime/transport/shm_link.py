"""The two ends of a shared-memory ring on an event loop: wake-ups, queueing, failure.

:class:`RingSender` writes a message and wakes the readers it is for with an
eventfd each (``send`` may be called from any thread: a worker's work thread
replies without waking its loop). When the ring has no room it keeps the
message, in order, and waits on its *space* eventfd, which readers signal
after consuming while the writer says it waits; a slow timer backs that up.
:class:`RingReceiver` puts its eventfd on the loop with ``add_reader`` and
hands each message addressed to it to ``deliver`` as views into the ring,
which stay valid only during that call: ``deliver`` decodes or copies. Nobody
spins. A corrupt ring (or a ``deliver`` that raises) fails the receiver:
``wait_failure`` raises it, and its owner stops loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .shm_fds import drain, signal
from .shm_ring import MAX_LANES, ShmRing, fence, polling_word
from .shm_ring_reader import RingReader
from .shm_ring_writer import RingWriter
from .shm_spin import AdaptiveSpin, LoopSpin

logger = logging.getLogger("actorexec.runtime.transport")

_BACKSTOP_S = 0.05  # re-check a full ring this often even without a space wake-up
Deliver = Callable[[list[memoryview]], None]


class LinkClosed(Exception):
    """A send on a closed link."""


class RingSender:
    """Writes messages into ``ring`` for readers given by bitmask; wakes each target.

    A reader may wait on several eventfds ("lanes": its event loop, its work
    thread); ``send`` says which one to wake. Whoever wakes reads every message
    in order, so the lane decides only who is woken, never what is read.

    ``max_queued`` bounds the messages kept while the ring is full (None: no
    bound, for calls, which are never dropped); past it a message is dropped
    with an error logged (replies to a caller that stopped reading).
    """

    def __init__(self, ring: ShmRing, wake_fds: Sequence[Sequence[int]], space_fd: int,
                 loop: asyncio.AbstractEventLoop, name: str,
                 max_queued: int | None = None) -> None:
        if any(not 1 <= len(fds) <= MAX_LANES for fds in wake_fds):
            raise ValueError(f"a reader has 1..{MAX_LANES} wake-up lanes")
        self._ring = ring
        self._writer = RingWriter(ring)
        # Per reader: its bit, and per lane asked for, (the eventfd to signal, the word of
        # its polling flag); a reader with one eventfd is woken on it for either lane.
        self._lanes = [(1 << index, [(fds[min(lane, len(fds) - 1)],
                                      polling_word(index, min(lane, len(fds) - 1)))
                                     for lane in range(MAX_LANES)])
                       for index, fds in enumerate(wake_fds)]
        self._space_fd = space_fd
        self._loop = loop
        self._name = name
        self._max_queued = max_queued
        self._lock = threading.Lock()
        # Records not yet written, in order: (parts, body, flags, targets, lane, message end).
        self._queue: deque[tuple[list[Any], int, int, int, int, bool]] = deque()
        self._queued_messages = 0
        self._dropped = 0
        self._waiting = False
        self._backstop: asyncio.TimerHandle | None = None
        self._closed = False
        self._loop_thread = threading.get_ident()  # built on the loop's thread

    def send(self, frames: Sequence[Any], targets: int, lane: int = 0) -> None:
        """Writes ``frames`` as one message for the readers in ``targets`` now (waking each
        on ``lane``), or keeps it (in order, copied) until they have made room. Never
        blocks."""
        with self._lock:
            if self._closed:
                raise LinkClosed(f"{self._name} is closed")
            if not self._queue and self._writer.try_write_message(frames, targets, lane):
                self._wake(targets, lane)  # the common case: one record, room for it
                return
            records = self._writer.message_records(frames, lane)
            written = 0
            if not self._queue:
                for parts, body, flags in records:
                    if not self._writer.try_write(parts, body, flags, targets):
                        break
                    written += 1
                if written:
                    self._wake(targets, lane)
                if written == len(records):
                    return
            if (written == 0 and self._max_queued is not None
                    and self._queued_messages >= self._max_queued):
                self._drop()  # (a message partly written is always finished: never torn)
                return
            for i, (parts, body, flags) in enumerate(records[written:], written):
                owned = [p if isinstance(p, bytes) else bytes(memoryview(p)) for p in parts]
                self._queue.append((owned, body, flags, targets, lane, i == len(records) - 1))
            self._queued_messages += 1
        if threading.get_ident() == self._loop_thread:
            self._wait_for_space()
        else:
            self._loop.call_soon_threadsafe(self._wait_for_space)

    @property
    def queued(self) -> int:
        """Messages waiting for room in the ring."""
        return self._queued_messages

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._queue.clear()
        self._stop_waiting()

    # -- waiting for room (on the loop) ---------------------------------------
    def _wait_for_space(self) -> None:
        if self._closed or self._waiting:
            return
        self._waiting = True
        self._ring.set_writer_waiting(True)
        self._loop.add_reader(self._space_fd, self._on_space)
        with self._lock:  # readers not addressed lately may hold the space: let them skip
            self._wake((1 << self._ring.readers) - 1, 0, always=True)
        self._on_space()

    def _on_space(self) -> None:
        drain(self._space_fd)
        if self._closed:
            return
        with self._lock:
            while self._queue:
                parts, body, flags, targets, lane, last = self._queue[0]
                if not self._writer.try_write(parts, body, flags, targets):
                    break
                self._queue.popleft()
                self._wake(targets, lane)
                if last:
                    self._queued_messages -= 1
            empty = not self._queue
        if empty:
            self._stop_waiting()
            if self._dropped:
                logger.error("%s: %d messages were dropped while the reader did not read",
                             self._name, self._dropped)
                self._dropped = 0
            return
        if self._backstop is None:
            self._backstop = self._loop.call_later(_BACKSTOP_S, self._on_backstop)

    def _on_backstop(self) -> None:
        self._backstop = None
        self._on_space()

    def _stop_waiting(self) -> None:
        if not self._waiting:
            return
        self._waiting = False
        if not self._closed:
            self._ring.set_writer_waiting(False)
        self._loop.remove_reader(self._space_fd)
        if self._backstop is not None:
            self._backstop.cancel()
            self._backstop = None

    # -- helpers ----------------------------------------------------------------
    def _wake(self, targets: int, lane: int, always: bool = False) -> None:
        """Signals lane ``lane`` of each target reader, unless it is polling the ring (the
        flag protocol in ``shm_ring.py``: the position was published before this fence)."""
        fence()
        words = self._ring.words
        for bit, lanes in self._lanes:
            if targets & bit:
                fd, flag_word = lanes[lane]
                if always or not words[flag_word]:
                    signal(fd)

    def _drop(self) -> None:
        self._dropped += 1
        if self._dropped == 1:
            logger.error("%s: the reader has not read its last %d messages; dropping further "
                         "ones until it does", self._name, self._queued_messages)


class RingReceiver:
    """Reader ``index`` of ``ring``, woken through ``wake_fd`` on the loop.

    Another thread may read too (:meth:`take_one`, the worker's work thread
    taking its own calls): one reader at a time, under ``lock``, in order. A
    message that thread reads but does not take is kept here (copied) and
    delivered by the loop before anything else.
    """

    def __init__(self, ring: ShmRing, index: int, wake_fd: int, space_fd: int,
                 loop: asyncio.AbstractEventLoop, name: str,
                 spin: AdaptiveSpin | None = None) -> None:
        self._ring = ring
        self._reader = RingReader(ring, index)
        # Is a message waiting (cheap; any thread)? The reader's own method: polled, so one
        # call less than a wrapper.
        self.pending: Callable[[], bool] = self._reader.pending
        self._wake_fd = wake_fd
        self._space_fd = space_fd
        self._loop = loop
        self._name = name
        self._deliver: Deliver | None = None
        self.lock = threading.Lock()
        self._kept: deque[list[Any]] = deque()  # read by the other thread, for the loop
        # The loop's short wait for its next message (lane 0: not one the other thread takes).
        self._spin = spin
        self._loop_spin = LoopSpin(loop, self._loop_message_waits, self._on_spin_ready,
                                   polling=lambda on: self.set_polling(0, on))
        self._failure: asyncio.Future[None] = loop.create_future()
        self._failure.add_done_callback(lambda f: f.cancelled() or f.exception())

    def start(self, deliver: Deliver) -> None:
        """Delivers every message from now on (and any already waiting)."""
        self._deliver = deliver
        self._loop.add_reader(self._wake_fd, self._on_wake)
        self._loop.call_soon(self._on_wake)

    async def wait_failure(self) -> None:
        """Never returns while the receiver works; raises why it stopped."""
        await asyncio.shield(self._failure)

    def close(self, why: BaseException | None = None) -> None:
        """Stops delivering; ``wait_failure`` raises ``why`` (LinkClosed by default)."""
        self._loop_spin.stop()
        if self._deliver is not None:
            with contextlib.suppress(ValueError, OSError):  # the loop or fd already closed
                self._loop.remove_reader(self._wake_fd)
            self._deliver = None
        if not self._failure.done():
            self._failure.set_exception(why or LinkClosed(f"{self._name} is closed"))

    def set_polling(self, lane: int, polling: bool) -> None:
        """Tells the writer whether this reader polls for ``lane`` (see ``shm_ring.py``)."""
        self._reader.set_polling(lane, polling)

    def _on_wake(self) -> None:
        drain(self._wake_fd)
        self._on_spin_ready()

    def _on_spin_ready(self) -> None:
        """Found by polling: no eventfd to reset (if one was signalled meanwhile, the loop
        calls ``_on_wake`` for it, which finds nothing more)."""
        spin = self._spin
        if spin is None:
            self.drain()
            return
        spin.arrived()
        self.drain()
        spin.waiting()
        self._loop_spin.start(spin.window())

    def _loop_message_waits(self) -> bool:
        lane = self._reader.next_lane()
        return lane is not None and lane != 1

    def drain(self) -> None:
        """Delivers every message waiting now (on the loop)."""
        deliver = self._deliver
        if deliver is None:
            return
        try:
            with self.lock:
                while self._kept:
                    deliver(self._kept.popleft())
                while (frames := self._reader.next_message()) is not None:
                    try:
                        deliver(frames)
                    finally:
                        self._reader.done_with(frames)  # views released, records handed back
        except BaseException as exc:
            logger.error("%s: receiving failed: %r", self._name, exc)
            self.close(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if self._ring.writer_waiting:
            signal(self._space_fd)

    def published_s(self) -> float:
        """When the ring's writer last published (``RingReader.published_s``; any thread)."""
        return self._reader.published_s()

    def next_lane(self) -> int | None:
        """A hint: the lane of the next message (``RingReader.next_lane``)."""
        return self._reader.next_lane()

    def take_one(self, may_take: Callable[[], bool],
                 take: Callable[[list[memoryview]], bool]) -> bool | None:
        """From another thread: if ``may_take()`` (checked under the lock), reads the next
        message and offers it to ``take`` (views valid during the call). One that ``take``
        declines is kept for the loop, which is woken. Returns True if taken, False if
        declined, None if nothing was read."""
        try:
            with self.lock:
                if self._deliver is None or self._kept or not may_take():
                    return None
                frames = self._reader.next_message()
                if frames is None:
                    return None
                try:
                    taken = take(frames)
                    if not taken:
                        self._kept.append([bytes(frame) for frame in frames])
                finally:
                    self._reader.done_with(frames)  # views released, records handed back
        except BaseException as exc:  # the ring is corrupt: fail on the loop, loudly
            logger.error("%s: receiving failed: %r", self._name, exc)
            self._loop.call_soon_threadsafe(self.close, exc)
            return None
        if not taken:
            signal(self._wake_fd)
        if self._ring.writer_waiting:
            signal(self._space_fd)
        return taken
