"""The shared-memory ring on its own: framing, wrap-around, chunking, targets, a full ring,
and corrupt framing refused (real memfd memory and eventfds, one process). Every ring test
runs on each pair of writer and reader: Python and compiled, and each with the other."""

from __future__ import annotations

import array
import asyncio
import os
import random
import shutil
import struct

import pytest

from actorexec.protocol import ProtocolError
from actorexec.runtime.transport import shm_ring_compiled
from actorexec.runtime.transport.shm_fds import MappedRing, close_fds, new_eventfd
from actorexec.runtime.transport.shm_link import RingReceiver, RingSender
from actorexec.runtime.transport.shm_ring import RingCorrupt
from actorexec.runtime.transport.shm_ring_reader import PyRingReader, RingReader
from actorexec.runtime.transport.shm_ring_writer import PyRingWriter, RingWriter

CAPACITY = 64 * 64  # 4 KiB: small, so the tests wrap and fill it


PAIRS = {"python": (PyRingWriter, PyRingReader), "compiled": (RingWriter, RingReader),
         "compiled writer": (RingWriter, PyRingReader),
         "compiled reader": (PyRingWriter, RingReader)}


@pytest.fixture(params=list(PAIRS))
def impl(request):
    if request.param != "python" and not shm_ring_compiled.COMPILED:
        pytest.skip("the compiled ring core is not built here")
    return PAIRS[request.param]


def test_the_compiled_core_is_built_wherever_a_c_compiler_is():
    """CI and every machine with a compiler run the compiled core: its absence is a broken
    build, not a quiet fallback."""
    if os.environ.get("ACTOREXEC_SHM_PURE_PYTHON", "0") not in ("", "0"):
        pytest.skip("ACTOREXEC_SHM_PURE_PYTHON is set")
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the Python ring is the one in use")
    assert shm_ring_compiled.COMPILED
    assert RingWriter is not PyRingWriter and RingReader is not PyRingReader


@pytest.fixture
def ring2():
    mapped = MappedRing.create("actorexec-test", CAPACITY, readers=2)
    yield mapped
    mapped.close()


def write(writer: PyRingWriter, frames: list[bytes], targets: int) -> bool:
    records = writer.message_records(frames)
    return all(writer.try_write(p, b, f, targets) for p, b, f in records)


def read_all(reader: PyRingReader) -> list[list[bytes]]:
    got = []
    while (frames := reader.next_message()) is not None:
        got.append([bytes(f) for f in frames])
        reader.release()
    return got


def test_messages_reach_their_targets_in_order_across_many_wraps(ring2, impl):
    Writer, Reader = impl
    writer = Writer(ring2.ring)
    r0, r1 = Reader(ring2.ring, 0), Reader(ring2.ring, 1)
    seen0, seen1 = [], []
    for i in range(500):  # ~100 bytes each: the 4 KiB ring wraps many times
        frames = [b"env%d" % i, os.urandom(i % 90), b""]
        targets = 0b11 if i % 3 else 0b01
        assert write(writer, frames, targets)
        seen0 += read_all(r0)
        seen1 += read_all(r1)
        if targets == 0b11:
            assert seen1[-1] == frames
        assert seen0[-1] == frames
    assert len(seen0) == 500 and len(seen1) == sum(1 for i in range(500) if i % 3)


def test_a_message_larger_than_the_ring_travels_in_chunks_once_readers_make_room(ring2, impl):
    Writer, Reader = impl
    writer = Writer(ring2.ring)
    readers = [Reader(ring2.ring, 0), Reader(ring2.ring, 1)]
    big = [b"head", os.urandom(10 * CAPACITY)]
    records = writer.message_records(big)
    assert len(records) > 4
    pending = list(records)
    got: list[list[list[bytes]]] = [[], []]
    while pending:
        parts, body, flags = pending[0]
        if writer.try_write(parts, body, flags, 0b11):
            pending.pop(0)
            continue
        for i, reader in enumerate(readers):  # full: readers consume, making room
            got[i] += read_all(reader)
    for i, reader in enumerate(readers):
        got[i] += read_all(reader)
    assert got == [[big], [big]]


def test_the_writer_refuses_what_does_not_fit_and_never_overwrites_unread_records(ring2, impl):
    Writer, Reader = impl
    writer = Writer(ring2.ring)
    reader0, reader1 = Reader(ring2.ring, 0), Reader(ring2.ring, 1)
    written = 0
    while write(writer, [b"x" * 200], 0b11):
        written += 1
    assert 0 < written < CAPACITY // 200
    assert len(read_all(reader0)) == written
    assert not write(writer, [b"x" * 200], 0b11)  # reader 1 has read nothing yet
    assert len(read_all(reader1)) == written
    assert write(writer, [b"y" * 200], 0b11)


@pytest.mark.parametrize("damage", ["sequence", "length", "kind", "frame lengths"])
def test_corrupt_framing_is_refused_with_a_protocol_error(ring2, impl, damage):
    Writer, Reader = impl
    writer = Writer(ring2.ring)
    assert write(writer, [b"first", b"payload"], 0b11)
    data = ring2.ring.data
    if damage == "sequence":
        struct.pack_into("<Q", data, 8, 7)
    elif damage == "length":
        struct.pack_into("<I", data, 0, CAPACITY)
    elif damage == "kind":
        struct.pack_into("<H", data, 4, 9)
    else:
        struct.pack_into("<I", data, 24 + 4, 1000)  # first frame's length
    with pytest.raises(RingCorrupt) as info:
        Reader(ring2.ring, 0).next_message()
    assert isinstance(info.value, ProtocolError)


async def test_a_sender_keeps_order_while_the_ring_is_full_and_the_receiver_is_woken():
    mapped = MappedRing.create("actorexec-test", CAPACITY, readers=1)
    wake, space = new_eventfd(), new_eventfd()
    loop = asyncio.get_running_loop()
    sender = RingSender(mapped.ring, [[wake]], space, loop, "test ring")
    receiver = RingReceiver(mapped.ring, 0, wake, space, loop, "test ring")
    got: list[bytes] = []
    try:
        for i in range(200):  # ~6x the ring: most wait in the sender's queue
            sender.send([b"%05d" % i, b"z" * 100], 1)
        assert sender.queued > 0
        receiver.start(lambda frames: got.append(bytes(frames[0])))
        for _ in range(200):
            if len(got) == 200:
                break
            await asyncio.sleep(0.01)
        assert got == [b"%05d" % i for i in range(200)]
        assert sender.queued == 0
    finally:
        receiver.close()
        sender.close()
        mapped.close()
        close_fds(wake, space)


def test_frames_of_any_contiguous_buffer_are_written_as_their_bytes(ring2, impl):
    Writer, Reader = impl
    writer, reader = Writer(ring2.ring), Reader(ring2.ring, 0)
    frames = [b"env", bytearray(b"abc"), memoryview(array.array("i", [1, 2, 3])), b""]
    assert writer.try_write_message(frames, 0b01, 1) is True
    assert read_all(reader) == [[b"env", b"abc", array.array("i", [1, 2, 3]).tobytes(), b""]]
    assert writer.try_write_message([b"x" * CAPACITY], 0b01) is None  # chunks: the caller's
    with pytest.raises(ValueError):
        writer.try_write_message([b""] * 5000, 0b01)  # more frames than a reader accepts
    with pytest.raises(ValueError):  # parts that do not fill the record exactly
        writer.try_write([b"abc"], 10, 3, 0b01)
    assert read_all(reader) == []  # nothing was written by the refused calls
    assert writer.try_write_message([memoryview(b"abcdef")[::2]], 0b01)  # strided: in order
    assert read_all(reader) == [[b"ace"]]


def test_a_released_ring_fails_calls_with_an_error_not_a_crash(impl):
    Writer, Reader = impl
    mapped = MappedRing.create("actorexec-test", CAPACITY, readers=1)
    writer, reader = Writer(mapped.ring), Reader(mapped.ring, 0)
    assert writer.try_write_message([b"x"], 1)
    mapped.ring.release()
    with pytest.raises(ValueError):
        reader.next_message()
    with pytest.raises(ValueError):
        writer.try_write_message([b"y"], 1)
    mapped.close()


def _outcomes(reader: PyRingReader) -> list[object]:
    """What a reader makes of a ring: each message's frames, until None or an error."""
    seen: list[object] = []
    for _ in range(200):
        try:
            frames = reader.next_message()
        except RingCorrupt:
            seen.append("corrupt")
            return seen
        if frames is None:
            return seen
        seen.append([bytes(f) for f in frames])
        reader.release()
    return seen


@pytest.mark.skipif(not shm_ring_compiled.COMPILED, reason="the compiled ring core is not built")
def test_damaged_rings_read_the_same_in_python_and_compiled():
    """Differential: the same damaged bytes, read by each reader from its own copy, give
    the same messages and the same refusal; nothing crashes or reads out of bounds."""
    rng = random.Random(14)
    for trial in range(300):
        rings = [MappedRing.create("actorexec-test", CAPACITY, readers=2) for _ in range(2)]
        try:
            writer = PyRingWriter(rings[0].ring)
            for i in range(rng.randrange(1, 40)):
                frames = [b"m%d" % i] + [rng.randbytes(rng.randrange(0, 300))
                                         for _ in range(rng.randrange(0, 3))]
                if not write(writer, frames, rng.choice([1, 2, 3])):
                    break
            mem = rings[0].ring._mem
            for _ in range(rng.randrange(0, 6)):  # damage: bytes anywhere in header or data
                at = rng.randrange(64 * 3, mem.nbytes)
                mem[at] = rng.randrange(256)
            if rng.random() < 0.2:
                rings[0].ring.words[8] += rng.choice([-64, 64, 8, 10**6])
            rings[1].ring._mem[:] = mem  # the same bytes for the other reader
            py = _outcomes(PyRingReader(rings[0].ring, 0))
            compiled = _outcomes(RingReader(rings[1].ring, 0))
            assert py == compiled, f"trial {trial}"
        finally:
            for mapped in rings:
                mapped.close()
