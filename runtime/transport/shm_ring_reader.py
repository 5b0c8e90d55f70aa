"""The reading end of a shared-memory ring (``shm_ring.py`` has the layout and the protocols
both ends follow). :class:`RingReader` is the compiled core's reader where it is built
(``shm_ring_compiled.py``), else :class:`PyRingReader`; both read the same bytes."""

from __future__ import annotations

from .shm_ring import (
    FIRST,
    KIND_MESSAGE,
    KIND_WRAP,
    LANE1,
    LAST,
    LINE,
    MAX_FRAMES,
    RECORD,
    U32,
    VALID_FLAGS,
    W_PUBLISHED,
    W_READ0,
    W_WRITE,
    RingCorrupt,
    ShmRing,
    align,
    fence,
    lengths_struct,
    order,
    polling_word,
)
from .shm_ring_compiled import CORE


class PyReaderCore:
    """Reader ``index`` of a ring. :meth:`next_message` returns the frames of the next
    message addressed to this reader (views into the ring, valid until
    :meth:`release`), skipping records for others; raises :class:`RingCorrupt`. The
    Python implementation of the compiled ``ReaderCore``."""

    def __init__(self, ring: ShmRing, index: int) -> None:
        if not 0 <= index < ring.readers:
            raise ValueError(f"reader index {index} outside 0..{ring.readers - 1}")
        self.ring = ring
        self.index = index
        self.bit = 1 << index
        self.slot = W_READ0 + 8 * index
        self._pos = ring.words[self.slot]
        self._seq = 0
        self._chunks: bytearray | None = None  # a chunked message being joined

    def pending(self) -> bool:
        """Has the writer published anything this reader has not consumed?"""
        return self.ring.words[W_WRITE] != self._pos

    def next_lane(self) -> int | None:
        """Without consuming: None if nothing is waiting; else the lane (0 or 1) of the next
        record, or -1 if it is not plainly a message for this reader (anyone may read on).
        Unchecked, so only a hint: the read itself checks everything."""
        ring = self.ring
        if ring.words[W_WRITE] == self._pos:
            return None
        order()
        _, kind, flags, _, targets = RECORD.unpack_from(ring.data, self._pos % ring.capacity)
        if kind != KIND_MESSAGE or not targets & self.bit:
            return -1
        return 1 if flags & LANE1 else 0

    def next_message(self) -> list[memoryview] | None:
        ring = self.ring
        end = ring.words[W_WRITE]
        if end == self._pos:
            return None
        order()  # the position before the bytes it publishes
        if end - self._pos > ring.capacity or end < self._pos:
            raise RingCorrupt(f"ring write position {end} is not within one ring of read "
                              f"position {self._pos}")
        while self._pos != end:
            offset = self._pos % ring.capacity
            body, kind, flags, seq, targets = self._header(offset)
            self._seq = seq
            wrap = kind == KIND_WRAP
            self._pos += ring.capacity - offset if wrap else align(RECORD.size + body)
            if self._pos > end:  # never published: the record's length is wrong
                raise RingCorrupt("a record that ends past the ring's write position")
            if wrap or not targets & self.bit:
                self.release()
                continue
            start = offset + RECORD.size
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
        order()  # finish reading the bytes before the writer may reuse them
        self.ring.words[self.slot] = self._pos

    def done_with(self, frames: list[memoryview]) -> None:
        """Releases a delivered message's frame views (a view kept past this point is a
        bug: made loud), then hands everything read so far back (:meth:`release`)."""
        for frame in frames:
            try:  # (try, not contextlib.suppress: this runs for every frame of every message)
                frame.release()
            except BufferError:
                pass
        self.release()

    def _header(self, offset: int) -> tuple[int, int, int, int, int]:
        ring = self.ring
        if offset % LINE:
            raise RingCorrupt(f"record at unaligned offset {offset}")
        body, kind, flags, seq, targets = RECORD.unpack_from(ring.data, offset)
        if seq != self._seq + 1:
            raise RingCorrupt(f"record sequence {seq} after {self._seq}")
        if kind == KIND_WRAP:
            if offset + RECORD.size + body != ring.capacity:
                raise RingCorrupt("a WRAP record that does not reach the end of the ring")
        elif kind != KIND_MESSAGE or flags & ~LANE1 not in VALID_FLAGS:
            raise RingCorrupt(f"record of unknown kind {kind} or flags {flags}")
        elif offset + RECORD.size + body > ring.capacity or body > ring.max_chunk:
            raise RingCorrupt(f"record body of {body} bytes overruns the ring")
        return body, kind, flags, seq, targets

    @staticmethod
    def _frames(body: memoryview) -> list[memoryview]:
        if body.nbytes < 4:
            raise RingCorrupt("message body without a frame count")
        (count,) = U32.unpack_from(body, 0)
        if not 1 <= count <= MAX_FRAMES or body.nbytes < 4 * (count + 1):
            raise RingCorrupt(f"message body with {count} frames")
        lengths = lengths_struct(count).unpack_from(body, 4)
        at = 4 * (count + 1)
        if at + sum(lengths) != body.nbytes:
            raise RingCorrupt("frame lengths do not add up to the message body")
        frames = []
        for n in lengths:
            frames.append(body[at:at + n])
            at += n
        return frames


class _Polling:
    """What both readers share: the publish time and the polling flags (not per message)."""

    __slots__ = ()
    ring: ShmRing
    index: int

    def published_s(self) -> float:
        """When the writer last published a record, in ``time.perf_counter()`` seconds: a
        reader woken from sleep learns when its message really came (the wake-up's own
        latency excluded). A hint for timing only, never for correctness."""
        return self.ring.words[W_PUBLISHED] / 1e9

    def set_polling(self, lane: int, polling: bool) -> None:
        """Says whether this reader polls the ring for ``lane`` (the writer then skips its
        signal). Clearing ends with a fence: look at the ring after it, before sleeping."""
        self.ring.words[polling_word(self.index, lane)] = int(polling)
        if not polling:
            fence()


class PyRingReader(_Polling, PyReaderCore):
    """Reader ``index`` of a ring, in Python."""


if CORE is not None:
    class CompiledRingReader(_Polling, CORE.ReaderCore):  # type: ignore[misc,name-defined]
        """Reader ``index`` of a ring, its per-message work compiled."""

        __slots__ = ()

    RingReader: type[PyRingReader] = CompiledRingReader  # type: ignore[assignment]
else:
    RingReader = PyRingReader
