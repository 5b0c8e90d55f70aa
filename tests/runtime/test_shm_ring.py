"""The shared-memory ring on its own: framing, wrap-around, chunking, targets, a full ring,
and corrupt framing refused (real memfd memory and eventfds, one process)."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest

from actorexec.protocol import ProtocolError
from actorexec.runtime.transport.shm_fds import MappedRing, close_fds, new_eventfd
from actorexec.runtime.transport.shm_link import RingReceiver, RingSender
from actorexec.runtime.transport.shm_ring import RingCorrupt, RingWriter
from actorexec.runtime.transport.shm_ring_reader import RingReader

CAPACITY = 64 * 64  # 4 KiB: small, so the tests wrap and fill it


@pytest.fixture
def ring2():
    mapped = MappedRing.create("actorexec-test", CAPACITY, readers=2)
    yield mapped
    mapped.close()


def write(writer: RingWriter, frames: list[bytes], targets: int) -> bool:
    records = writer.message_records(frames)
    return all(writer.try_write(p, b, f, targets) for p, b, f in records)


def read_all(reader: RingReader) -> list[list[bytes]]:
    got = []
    while (frames := reader.next_message()) is not None:
        got.append([bytes(f) for f in frames])
        reader.release()
    return got


def test_messages_reach_their_targets_in_order_across_many_wraps(ring2):
    writer = RingWriter(ring2.ring)
    r0, r1 = RingReader(ring2.ring, 0), RingReader(ring2.ring, 1)
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


def test_a_message_larger_than_the_ring_travels_in_chunks_once_readers_make_room(ring2):
    writer = RingWriter(ring2.ring)
    readers = [RingReader(ring2.ring, 0), RingReader(ring2.ring, 1)]
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


def test_the_writer_refuses_what_does_not_fit_and_never_overwrites_unread_records(ring2):
    writer = RingWriter(ring2.ring)
    reader0, reader1 = RingReader(ring2.ring, 0), RingReader(ring2.ring, 1)
    written = 0
    while write(writer, [b"x" * 200], 0b11):
        written += 1
    assert 0 < written < CAPACITY // 200
    assert len(read_all(reader0)) == written
    assert not write(writer, [b"x" * 200], 0b11)  # reader 1 has read nothing yet
    assert len(read_all(reader1)) == written
    assert write(writer, [b"y" * 200], 0b11)


@pytest.mark.parametrize("damage", ["sequence", "length", "kind", "frame lengths"])
def test_corrupt_framing_is_refused_with_a_protocol_error(ring2, damage):
    writer = RingWriter(ring2.ring)
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
        RingReader(ring2.ring, 0).next_message()
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
