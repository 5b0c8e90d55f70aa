"""A ring of variable-size records in shared memory: one writer, up to 64 readers.

The executor writes a call once and every local rank reads it from the same
memory (one copy for N ranks); each rank writes its replies into a ring of its
own. This module (the layout and the writer) and ``shm_ring_reader.py`` (the
reading end) are only the memory layout and the cursor rules: no event loop,
no file descriptors, no waiting (``shm_link.py`` adds wake-ups and queueing).
Layout, every field a little-endian u64 on its own 64-byte line so that writer
and readers never share a cache line they both write::

    line 0       magic, version, capacity, number of readers
    line 1       write position (bytes ever written; only the writer stores it), then
                 when the last record was published (``time.perf_counter_ns``:
                 CLOCK_MONOTONIC, one clock for every process of the host)
    line 2       "writer waits for space" flag
    line 3 + i   reader i's line (only reader i stores it): its read position, then
                 a "polling" flag per lane (see below)
    then         ``capacity`` bytes of records

A record starts on a 64-byte boundary: a 24-byte header (body length u32,
kind u16, flags u16, sequence number u64, target bitmask u64) and its body. A
record never wraps: when it does not fit before the end, the writer leaves a
WRAP record there and starts again at offset 0. A message is one record
(FIRST | LAST), or, when larger than a quarter of the ring, a run of CHUNK
records (the first also FIRST, the last also LAST) that the readers join;
LANE1 marks a message whose readers' work threads were woken for it. A
message body is ``u32 frame count, u32 length per frame``, then the frames
back to back; readers get ``memoryview``s of the frames in
the ring itself, valid until they release the record.

Skipped wake-ups: a reader that is polling the ring (its short wait) sets its
lane's polling flag, and the writer, after publishing, signals only lanes
whose flag is clear, saving the eventfd write and the reader's read, and on a
machine with few cores the writer's being descheduled for the woken reader.
The flag is the classic futex protocol (Dekker's two flags): the writer
stores the write position, fences, then loads the flag; the reader, before
it stops polling (to sleep, or to do anything else), clears the flag,
fences, then loads the write position once more. With a full fence between
each side's store and its load, the two loads cannot both miss the other
side's store: either the writer sees the flag clear and signals, or the
reader sees the record in its last look. While the flag is set the reader
looks at the ring again and again, so nothing published then is missed
either. A cleared flag (memory starts zeroed; a reader that is not polling)
means "signal me", so a reader that never polls behaves as before. Clearing
is conservative: a spurious signal costs one wake-up, never a lost message.
The full fence is ``fence()``: on x86 a lock's acquire is a locked
instruction, which orders a store before a later load (plain x86 ordering
does not). Where a processor might order it more weakly, each reader takes
one more look at the ring a little after a polling window ends
(``shm_spin.BACKSTOP_S``): a wake-up lost there costs milliseconds, never a
hang.

Readers check every header (kind, flags, bounds, consecutive sequence
numbers, frame lengths) before using it: a ring whose framing does not hold is
corrupt (:class:`RingCorrupt`, a ``ProtocolError``), never read past.

Ordering: x86 keeps stores in order and loads in order, which is all the
write-data-then-publish-position protocol needs; on weaker memory models the
fences (``fence()``: a lock's acquire and release, as vLLM's shm queue does)
order them. The eventfd wake-ups in ``shm_link.py`` are system calls that
order memory too.
"""

from __future__ import annotations

import functools
import platform
import struct
import threading
from typing import Any

from actorexec.protocol.errors import ProtocolError

MAX_READERS = 64
LINE = 64
_MAGIC = 0x31474E4952455841  # b"AXERING1"
LAYOUT_VERSION = 3  # 2: the polling flags in each reader's line; 3: the publish time
W_MAGIC, W_VERSION, W_CAPACITY, W_READERS = 0, 1, 2, 3
W_WRITE = 8  # word index of line 1
W_PUBLISHED = 9  # beside the write position: stored just before it
W_WAITING = 16  # line 2
W_READ0 = 24  # line 3; reader i at W_READ0 + 8 * i
W_POLLING = 1  # reader i's polling flag of lane l at W_READ0 + 8 * i + W_POLLING + l
MAX_LANES = 2  # polling flags per reader (its loop and its work thread)

RECORD = struct.Struct("<IHHQQ")  # body length, kind, flags, sequence, targets
U32 = struct.Struct("<I")
KIND_MESSAGE, KIND_WRAP = 1, 2
FIRST, LAST, CHUNK = 1, 2, 4  # a whole message is FIRST | LAST; chunks carry CHUNK
VALID_FLAGS = frozenset({FIRST | LAST, CHUNK | FIRST, CHUNK, CHUNK | LAST})
LANE1 = 8  # whom the writer woke for it: the reader's work thread (else its event loop)
MAX_FRAMES = 4096

_fence_lock = threading.Lock()


def fence() -> None:
    """A full memory barrier (a lock's acquire and release): orders a store before a later
    load of another word, which the polling flag's protocol needs on every processor."""
    with _fence_lock:
        pass


def _no_barrier() -> None:
    """x86-64 orders this already (see :data:`order`)."""


# The record protocol's own orderings: the record's bytes stored before the position that
# publishes them, the position loaded before the bytes, the bytes read before the read
# position hands them back. x86-64 (total store order) keeps stores after stores, loads
# after loads and stores after earlier loads, so there ``order()`` costs nothing (a
# fence is ~0.3 us of Python a call, several a message); elsewhere it is a full fence.
# The compiler cannot reorder either: each access is its own call into the interpreter.
TOTAL_STORE_ORDER = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
order = _no_barrier if TOTAL_STORE_ORDER else fence


class RingCorrupt(ProtocolError):
    """The ring's framing does not hold (a bad header, a gap in the sequence): nothing in it
    can be trusted any more."""


def header_bytes(readers: int) -> int:
    return LINE * (3 + readers)


def ring_bytes(capacity: int, readers: int) -> int:
    """Bytes of shared memory a ring of ``capacity`` data bytes and ``readers`` readers uses."""
    return header_bytes(readers) + capacity


def polling_word(index: int, lane: int) -> int:
    """The word of reader ``index``'s polling flag for ``lane``."""
    return W_READ0 + 8 * index + W_POLLING + lane


def align(n: int) -> int:
    return (n + LINE - 1) & ~(LINE - 1)


@functools.cache
def lengths_struct(count: int) -> struct.Struct:
    """``count`` frame lengths (u32 each)."""
    return struct.Struct(f"<{count}I")


class ShmRing:
    """The shared memory of one ring, mapped in this process (``buffer``: an mmap).

    ``create=True`` lays out an empty ring (the writer's side, before any reader
    maps it); otherwise the header is checked against ``capacity`` and ``readers``.
    """

    def __init__(self, buffer: Any, capacity: int, readers: int, create: bool) -> None:
        if not 1 <= readers <= MAX_READERS:
            raise ValueError(f"a ring has 1..{MAX_READERS} readers, not {readers}")
        if capacity % LINE or capacity < 16 * LINE:
            raise ValueError(f"ring capacity must be a multiple of {LINE}, at least {16 * LINE}")
        self.capacity = capacity
        self.readers = readers
        self.max_chunk = capacity // 4  # a record this size always fits once readers catch up
        self._mem = memoryview(buffer)
        hdr = header_bytes(readers)
        if self._mem.nbytes < hdr + capacity:
            raise ValueError("the shared memory is smaller than the ring")
        self.words = self._mem[:hdr].cast("Q")
        self.data = self._mem[hdr:hdr + capacity]
        if create:
            self.words[W_MAGIC], self.words[W_VERSION] = _MAGIC, LAYOUT_VERSION
            self.words[W_CAPACITY], self.words[W_READERS] = capacity, readers
        elif (self.words[W_MAGIC], self.words[W_VERSION], self.words[W_CAPACITY],
              self.words[W_READERS]) != (_MAGIC, LAYOUT_VERSION, capacity, readers):
            raise RingCorrupt("the shared memory does not hold a ring of the expected shape")

    def release(self) -> None:
        """Drops this process's views (the mmap can close once no message view is alive)."""
        for view in (self.words, self.data, self._mem):
            view.release()

    # -- the writer's side ----------------------------------------------------
    @property
    def write_position(self) -> int:
        return self.words[W_WRITE]

    def free_bytes(self) -> int:
        words = self.words
        slowest = min(words[W_READ0 + 8 * i] for i in range(self.readers))
        return self.capacity - (words[W_WRITE] - slowest)

    def set_writer_waiting(self, waiting: bool) -> None:
        self.words[W_WAITING] = int(waiting)
        fence()

    @property
    def writer_waiting(self) -> bool:
        return self.words[W_WAITING] != 0
