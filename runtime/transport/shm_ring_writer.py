"""The writing end of a shared-memory ring (``shm_ring.py`` has the layout and the
protocols). :class:`RingWriter` is the compiled core's writer where it is built
(``shm_ring_compiled.py``), else :class:`PyRingWriter`; both write the same bytes."""

from __future__ import annotations

import functools
import struct
import time
from collections.abc import Sequence
from typing import Any

from .shm_ring import (
    CHUNK,
    FIRST,
    KIND_MESSAGE,
    KIND_WRAP,
    LANE1,
    LAST,
    MAX_FRAMES,
    RECORD,
    W_PUBLISHED,
    W_WRITE,
    ShmRing,
    align,
    order,
)
from .shm_ring_compiled import CORE


class PyWriterCore:
    """Writes records; never waits. Only one writer per ring, and not from two threads
    at once (the caller serialises). The Python implementation of the compiled
    ``WriterCore``."""

    def __init__(self, ring: ShmRing) -> None:
        self.ring = ring
        self._seq = 0
        # Write positions below this are free as of the last look at the readers' positions
        # (which only grow, so an old look is never too generous): most writes skip the look.
        self._limit = 0

    def try_write_message(self, frames: Sequence[Any], targets: int,
                          lane: int = 0) -> bool | None:
        """The common case in one step: ``frames`` as one record, written and published;
        False (nothing written) if it does not fit now, None if it is larger than a quarter
        of the ring (then ``message_records`` cuts it into chunks)."""
        if len(frames) > MAX_FRAMES:
            raise ValueError(f"a message has at most {MAX_FRAMES} frames")
        lengths = _frame_lengths(frames)
        count = len(lengths)
        body = 4 * (count + 1) + sum(lengths)
        ring = self.ring
        if body > ring.max_chunk:
            return None
        start = self._reserve(RECORD.size + body)
        if start is None:
            return False
        offset, end = start
        self._seq += 1
        head = _head_struct(count)
        data = ring.data
        head.pack_into(data, offset, body, KIND_MESSAGE, FIRST | LAST | (LANE1 if lane else 0),
                       self._seq, targets, count, *lengths)
        _copy_parts(data, offset + head.size, frames)
        self._publish(end)
        return True

    def try_write(self, parts: Sequence[Any], body: int, flags: int, targets: int) -> bool:
        """Writes one record and publishes it; False (nothing written) if it does not fit now."""
        ring = self.ring
        if body > ring.max_chunk:
            raise ValueError(f"a record body of {body} bytes exceeds {ring.max_chunk}; "
                             "use message_records")
        total = sum(_frame_lengths(parts))
        if total != body:  # never write past the record
            raise ValueError(f"parts of {total} bytes for a record body of {body}")
        start = self._reserve(RECORD.size + body)
        if start is None:
            return False
        offset, end = start
        self._seq += 1
        RECORD.pack_into(ring.data, offset, body, KIND_MESSAGE, flags, self._seq, targets)
        _copy_parts(ring.data, offset + RECORD.size, parts)
        self._publish(end)
        return True

    def _reserve(self, record_bytes: int) -> tuple[int, int] | None:
        """Room for a record of ``record_bytes``: (its offset, the write position after it),
        having left a WRAP record in the tail if it does not fit before the end; None (nothing
        written) if the readers have not made room yet."""
        ring = self.ring
        size = align(record_bytes)
        pos = ring.words[W_WRITE]
        offset = pos % ring.capacity
        to_end = ring.capacity - offset
        need = size if size <= to_end else to_end + size
        if pos + need > self._limit:
            self._limit = pos + ring.free_bytes()
            if pos + need > self._limit:
                return None
        if size > to_end:  # leave a WRAP record in the tail and start at 0
            self._seq += 1
            RECORD.pack_into(ring.data, offset, to_end - RECORD.size, KIND_WRAP, 0, self._seq, 0)
            return 0, pos + to_end + size
        return offset, pos + size

    def _publish(self, end: int) -> None:
        words = self.ring.words
        # Before the position, like the record: a reader that sees the new position sees
        # this too (when its message came, for a reader that slept through it).
        words[W_PUBLISHED] = time.perf_counter_ns()
        order()  # the record's bytes before the position that publishes them
        words[W_WRITE] = end


class _Records:
    """What both writers share: cutting a large message into chunk records."""

    __slots__ = ()
    ring: ShmRing

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


class PyRingWriter(_Records, PyWriterCore):
    """The writer of a ring, in Python."""


if CORE is not None:
    class CompiledRingWriter(_Records, CORE.WriterCore):  # type: ignore[misc,name-defined]
        """The writer of a ring, its per-message work compiled."""

        __slots__ = ()

    RingWriter: type[PyRingWriter] = CompiledRingWriter  # type: ignore[assignment]
else:
    RingWriter = PyRingWriter


def _frame_lengths(frames: Sequence[Any]) -> list[int]:
    return [len(f) if type(f) is bytes else memoryview(f).nbytes for f in frames]


def _body_prefix(frames: Sequence[Any]) -> tuple[bytes, int]:
    lengths = _frame_lengths(frames)
    prefix = struct.pack(f"<I{len(lengths)}I", len(lengths), *lengths)
    return prefix, len(prefix) + sum(lengths)


@functools.cache
def _head_struct(count: int) -> struct.Struct:
    """A one-record message's header and body prefix, packed at once: the record header,
    the frame count, ``count`` frame lengths."""
    return struct.Struct(f"{RECORD.format}I{count}I")


def _copy_parts(data: memoryview, at: int, parts: Sequence[Any]) -> None:
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
