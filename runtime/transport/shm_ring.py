"""A ring of variable-size records in shared memory: one writer, up to 64 readers.

The executor writes a call once and every local rank reads it from the same
memory (one copy for N ranks); each rank writes its replies into a ring of its
own. This module is only the memory layout and the cursor rules: no event
loop, no file descriptors, no waiting (``shm_link.py`` adds wake-ups and
queueing). Layout, every field a little-endian u64 on its own 64-byte line so
that writer and readers never share a cache line they both write::

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

import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

from actorexec.protocol.errors import ProtocolError

MAX_READERS = 64
LINE = 64
_MAGIC = 0x31474E4952455841  # b"AXERING1"
_VERSION = 3  # 2: the polling flags in each reader's line; 3: the publish time
_W_MAGIC, _W_VERSION, _W_CAPACITY, _W_READERS = 0, 1, 2, 3
_W_WRITE = 8  # word index of line 1
_W_PUBLISHED = 9  # beside the write position: stored just before it
_W_WAITING = 16  # line 2
_W_READ0 = 24  # line 3; reader i at _W_READ0 + 8 * i
_W_POLLING = 1  # reader i's polling flag of lane l at _W_READ0 + 8 * i + _W_POLLING + l
MAX_LANES = 2  # polling flags per reader (its loop and its work thread)

_RECORD = struct.Struct("<IHHQQ")  # body length, kind, flags, sequence, targets
_U32 = struct.Struct("<I")
KIND_MESSAGE, KIND_WRAP = 1, 2
FIRST, LAST, CHUNK = 1, 2, 4  # a whole message is FIRST | LAST; chunks carry CHUNK
_FLAGS = frozenset({FIRST | LAST, CHUNK | FIRST, CHUNK, CHUNK | LAST})
LANE1 = 8  # whom the writer woke for it: the reader's work thread (else its event loop)
MAX_FRAMES = 4096

_fence_lock = threading.Lock()


def fence() -> None:
    """A full memory barrier (a lock's acquire and release)."""
    with _fence_lock:
        pass


class RingCorrupt(ProtocolError):
    """The ring's framing does not hold (a bad header, a gap in the sequence): nothing in it
    can be trusted any more."""


def header_bytes(readers: int) -> int:
    return LINE * (3 + readers)


def ring_bytes(capacity: int, readers: int) -> int:
    """Bytes of shared memory a ring of ``capacity`` data bytes and ``readers`` readers uses."""
    return header_bytes(readers) + capacity


def _align(n: int) -> int:
    return (n + LINE - 1) & ~(LINE - 1)


def _body_prefix(frames: Sequence[Any]) -> tuple[bytes, int]:
    lengths = [len(f) if type(f) is bytes else memoryview(f).nbytes for f in frames]
    prefix = struct.pack(f"<I{len(lengths)}I", len(lengths), *lengths)
    return prefix, len(prefix) + sum(lengths)


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
            self.words[_W_MAGIC], self.words[_W_VERSION] = _MAGIC, _VERSION
            self.words[_W_CAPACITY], self.words[_W_READERS] = capacity, readers
        elif (self.words[_W_MAGIC], self.words[_W_VERSION], self.words[_W_CAPACITY],
              self.words[_W_READERS]) != (_MAGIC, _VERSION, capacity, readers):
            raise RingCorrupt("the shared memory does not hold a ring of the expected shape")

    def release(self) -> None:
        """Drops this process's views (the mmap can close once no message view is alive)."""
        for view in (self.words, self.data, self._mem):
            view.release()

    # -- the writer's side ----------------------------------------------------
    @property
    def write_position(self) -> int:
        return self.words[_W_WRITE]

    def free_bytes(self) -> int:
        words = self.words
        slowest = min(words[_W_READ0 + 8 * i] for i in range(self.readers))
        return self.capacity - (words[_W_WRITE] - slowest)

    def set_writer_waiting(self, waiting: bool) -> None:
        self.words[_W_WAITING] = int(waiting)
        fence()

    @property
    def writer_waiting(self) -> bool:
        return self.words[_W_WAITING] != 0

    def reader_polling(self, index: int, lane: int) -> bool:
        """Is reader ``index`` polling for lane ``lane`` (so needs no signal)? The writer
        calls this after publishing and a ``fence()`` (the protocol in the docstring)."""
        return self.words[_W_READ0 + 8 * index + _W_POLLING + lane] != 0


class RingWriter:
    """Writes records; never waits. Only one writer per ring, and not from two threads
    at once (the caller serialises)."""

    def __init__(self, ring: ShmRing) -> None:
        self.ring = ring
        self._seq = 0
        # Write positions below this are free as of the last look at the readers' positions
        # (which only grow, so an old look is never too generous): most writes skip the look.
        self._limit = 0

    def message_records(self, frames: Sequence[Any],
                        lane: int = 0) -> list[tuple[list[Any], int, int]]:
        """``frames`` as records ``(parts, body length, flags)``: one, or chunks of a copy
        when the message is larger than a quarter of the ring."""
        prefix, body = _body_prefix(frames)
        lane_flag = LANE1 if lane else 0
        if body <= self.ring.max_chunk:
            return [([prefix, *frames], body, FIRST | LAST | lane_flag)]
        whole = memoryview(b"".join([prefix, *(bytes(memoryview(f)) for f in frames)]))
        step = self.ring.max_chunk
        chunks = []
        for start in range(0, body, step):
            flags = (CHUNK | lane_flag | (FIRST if start == 0 else 0)
                     | (LAST if start + step >= body else 0))
            piece = whole[start:start + step]
            chunks.append(([piece], piece.nbytes, flags))
        return chunks

    def try_write(self, parts: Sequence[Any], body: int, flags: int, targets: int) -> bool:
        """Writes one record and publishes it; False (nothing written) if it does not fit now."""
        ring = self.ring
        if body > ring.max_chunk:
            raise ValueError(f"a record body of {body} bytes exceeds {ring.max_chunk}; "
                             "use message_records")
        size = _align(_RECORD.size + body)
        pos = ring.words[_W_WRITE]
        offset = pos % ring.capacity
        to_end = ring.capacity - offset
        need = size if size <= to_end else to_end + size
        if pos + need > self._limit:
            self._limit = pos + ring.free_bytes()
            if pos + need > self._limit:
                return False
        data = ring.data
        if size > to_end:  # leave a WRAP record in the tail and start at 0
            self._seq += 1
            _RECORD.pack_into(data, offset, to_end - _RECORD.size, KIND_WRAP, 0, self._seq, 0)
            pos += to_end
            offset = 0
        self._seq += 1
        _RECORD.pack_into(data, offset, body, KIND_MESSAGE, flags, self._seq, targets)
        at = offset + _RECORD.size
        for part in parts:
            if type(part) is bytes:  # most frames (encoded payloads): no view needed
                n = len(part)
                data[at:at + n] = part
            else:
                view = memoryview(part)
                if view.format != "B" or view.ndim != 1:
                    view = view.cast("B")
                n = view.nbytes
                data[at:at + n] = view
            at += n
        # Before the fence, like the record: a reader that sees the new position sees
        # this too (when its message came, for a reader that slept through it).
        ring.words[_W_PUBLISHED] = time.perf_counter_ns()
        fence()  # the record's bytes before the position that publishes them
        ring.words[_W_WRITE] = pos + size
        return True


class RingReader:
    """Reader ``index`` of a ring. :meth:`next_message` returns the frames of the next
    message addressed to this reader (views into the ring, valid until
    :meth:`release`), skipping records for others; raises :class:`RingCorrupt`."""

    def __init__(self, ring: ShmRing, index: int) -> None:
        if not 0 <= index < ring.readers:
            raise ValueError(f"reader index {index} outside 0..{ring.readers - 1}")
        self.ring = ring
        self.index = index
        self.bit = 1 << index
        self._slot = _W_READ0 + 8 * index
        self._pos = ring.words[self._slot]
        self._seq = 0
        self._chunks: bytearray | None = None  # a chunked message being joined

    def pending(self) -> bool:
        """Has the writer published anything this reader has not consumed?"""
        return self.ring.words[_W_WRITE] != self._pos

    def published_s(self) -> float:
        """When the writer last published a record, in ``time.perf_counter()`` seconds: a
        reader woken from sleep learns when its message really came (the wake-up's own
        latency excluded). A hint for timing only, never for correctness."""
        return self.ring.words[_W_PUBLISHED] / 1e9

    def set_polling(self, lane: int, polling: bool) -> None:
        """Says whether this reader polls the ring for ``lane`` (the writer then skips its
        signal). Clearing ends with a fence: look at the ring after it, before sleeping."""
        self.ring.words[self._slot + _W_POLLING + lane] = int(polling)
        if not polling:
            fence()

    def next_lane(self) -> int | None:
        """Without consuming: None if nothing is waiting; else the lane (0 or 1) of the next
        record, or -1 if it is not plainly a message for this reader (anyone may read on).
        Unchecked, so only a hint: the read itself checks everything."""
        ring = self.ring
        if ring.words[_W_WRITE] == self._pos:
            return None
        fence()
        _, kind, flags, _, targets = _RECORD.unpack_from(ring.data, self._pos % ring.capacity)
        if kind != KIND_MESSAGE or not targets & self.bit:
            return -1
        return 1 if flags & LANE1 else 0

    def next_message(self) -> list[memoryview] | None:
        ring = self.ring
        end = ring.words[_W_WRITE]
        fence()  # the position before the bytes it publishes
        if end - self._pos > ring.capacity or end < self._pos:
            raise RingCorrupt(f"ring write position {end} is not within one ring of read "
                              f"position {self._pos}")
        while self._pos != end:
            offset = self._pos % ring.capacity
            body, kind, flags, seq, targets = self._header(offset)
            self._seq = seq
            wrap = kind == KIND_WRAP
            self._pos += ring.capacity - offset if wrap else _align(_RECORD.size + body)
            if wrap or not targets & self.bit:
                self.release()
                continue
            start = offset + _RECORD.size
            view = ring.data[start:start + body]
            if flags & ~LANE1 == FIRST | LAST:
                return self._frames(view)
            if flags & FIRST:
                if self._chunks is not None:
                    raise RingCorrupt("a new chunked message began inside another")
                self._chunks = bytearray(view)
            elif self._chunks is None:
                raise RingCorrupt("a chunk arrived without the first chunk of its message")
            else:
                self._chunks += view
            view.release()
            self.release()
            if flags & LAST:
                whole, self._chunks = self._chunks, None
                return self._frames(memoryview(whole))
        return None

    def release(self) -> None:
        """Hands back everything read so far (frames of the last message included)."""
        fence()  # finish reading the bytes before the writer may reuse them
        self.ring.words[self._slot] = self._pos

    def _header(self, offset: int) -> tuple[int, int, int, int, int]:
        ring = self.ring
        if offset % LINE:
            raise RingCorrupt(f"record at unaligned offset {offset}")
        body, kind, flags, seq, targets = _RECORD.unpack_from(ring.data, offset)
        if seq != self._seq + 1:
            raise RingCorrupt(f"record sequence {seq} after {self._seq}")
        if kind == KIND_WRAP:
            if offset + _RECORD.size + body != ring.capacity:
                raise RingCorrupt("a WRAP record that does not reach the end of the ring")
        elif kind != KIND_MESSAGE or flags & ~LANE1 not in _FLAGS:
            raise RingCorrupt(f"record of unknown kind {kind} or flags {flags}")
        elif offset + _RECORD.size + body > ring.capacity or body > ring.max_chunk:
            raise RingCorrupt(f"record body of {body} bytes overruns the ring")
        return body, kind, flags, seq, targets

    @staticmethod
    def _frames(body: memoryview) -> list[memoryview]:
        if body.nbytes < 4:
            raise RingCorrupt("message body without a frame count")
        (count,) = _U32.unpack_from(body, 0)
        if not 1 <= count <= MAX_FRAMES or body.nbytes < 4 * (count + 1):
            raise RingCorrupt(f"message body with {count} frames")
        lengths = struct.unpack_from(f"<{count}I", body, 4)
        at = 4 * (count + 1)
        if at + sum(lengths) != body.nbytes:
            raise RingCorrupt("frame lengths do not add up to the message body")
        frames = []
        for n in lengths:
            frames.append(body[at:at + n])
            at += n
        return frames
