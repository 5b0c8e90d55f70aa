"""The shared-memory transport with real actor processes: garbage and refused calls run
nothing, corrupt framing stops the actor loudly, messages of any size get through a full
ring in order, and the rings live in memfd memory (nothing in /dev/shm)."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import time

import msgspec
import pytest

from actorexec.protocol import ActorDiedError, MethodNotAllowedError
from actorexec.protocol.codec import EnvelopeCodec, generic_spec
from actorexec.protocol.envelopes import Call, Failure, Ready, Result
from actorexec.runtime import PreparedCall, run
from actorexec.runtime.child import FAILED_EXIT_CODE, ExitCleanup
from actorexec.runtime.process import new_child_process
from actorexec.runtime.shm_ref import ShmProcessRef
from actorexec.runtime.transport.shm_channel import ShmChannel
from actorexec.runtime.transport.shm_fds import signal as wake
from tests.protocol.step_sink import StepSink
from tests.protocol.test_strict_wire_process import MALFORMED, _call, _step

from .actors import Counter
from .test_transport import COUNTER

SPECS = Counter.method_specs()
CODEC = EnvelopeCodec()


async def spawn_counter(channel: ShmChannel, start: int = 0) -> ShmProcessRef:
    ref = await ShmProcessRef.spawn_on(channel, COUNTER, {"start": start}, rank=0)
    try:
        await ref.wait_ready(30)
    except BaseException:
        ref.kill_now()
        raise
    return ref


class RawPeer:
    """The executor's side of a channel written and read by hand (no ProcessRef)."""

    def __init__(self, actor_path: str, init: dict) -> None:
        self.channel = ShmChannel(1)
        self.process = new_child_process(actor_path, init, 0, self.channel.endpoint(0), "shm",
                                         None, ExitCleanup())
        self.replies: asyncio.Queue[list[bytes]] = asyncio.Queue()

    async def start(self) -> None:
        self.channel.receive_replies(
            0, lambda frames: self.replies.put_nowait([bytes(f) for f in frames]))
        self.process.start()
        assert isinstance(CODEC.decode((await self.exchange([CODEC.encode(
            Call(0, "__ready__"))]))[0]), Ready)

    async def exchange(self, frames: list[bytes]) -> list[bytes]:
        self.channel.send(frames, 1)
        return await asyncio.wait_for(self.replies.get(), 10)

    def close(self) -> None:
        if self.process.exitcode is None:
            self.process.kill()
        self.process.join(5)
        self.channel.close()


@pytest.mark.timeout(60)
async def test_garbage_and_refused_calls_written_into_the_ring_run_nothing():
    peer = RawPeer(COUNTER, {"start": 10})
    await peer.start()
    try:
        failure = CODEC.decode((await peer.exchange([b"\xc1garbage", b"more"]))[0])
        assert isinstance(failure, Failure) and failure.call_id == -1
        assert "ProtocolError" in failure.exc_type
        bad = [CODEC.encode(Call(7, "incr")), msgspec.msgpack.encode({"by": "x"})]
        failure = CODEC.decode((await peer.exchange(bad))[0])
        assert failure.call_id == 7 and "ProtocolError" in failure.exc_type
        secret = [CODEC.encode(Call(8, "secret")), msgspec.msgpack.encode({})]
        failure = CODEC.decode((await peer.exchange(secret))[0])
        assert failure.call_id == 8 and "MethodNotAllowedError" in failure.exc_type
        ok = [CODEC.encode(Call(9, "incr")), msgspec.msgpack.encode({"by": 1})]
        reply = await peer.exchange(ok)
        assert isinstance(CODEC.decode(reply[0]), Result)
        assert msgspec.msgpack.decode(reply[1]) == 11  # nothing refused had run
        stop = await peer.exchange([CODEC.encode(Call(10, "shutdown")),
                                    msgspec.msgpack.encode({})])
        assert isinstance(CODEC.decode(stop[0]), Result)
        await asyncio.get_running_loop().run_in_executor(None, peer.process.join, 10)
        assert peer.process.exitcode == 0
    finally:
        peer.close()


@pytest.mark.timeout(60)
async def test_malformed_step_payloads_in_the_ring_are_protocol_errors_and_run_nothing():
    peer = RawPeer("tests.protocol.step_sink:StepSink", {})
    await peer.start()
    try:
        not_refused = []
        for case, frames in MALFORMED.items():
            reply = CODEC.decode((await peer.exchange(frames))[0])
            if not (isinstance(reply, Failure) and "ProtocolError" in reply.exc_type):
                not_refused.append((case, reply))
        assert not_refused == []
        count = [CODEC.encode(Call(20, "count")), msgspec.msgpack.encode({})]
        assert msgspec.msgpack.decode((await peer.exchange(count))[1]) == 0  # nothing ran
        good = _call(21, {"step": _step(), "extra": [0, "float32", [2]]}, bytes(8))
        assert isinstance(CODEC.decode((await peer.exchange(good))[0]), Result)
        assert StepSink.rpc_methods  # (the actor class the peer runs)
    finally:
        peer.close()


def _publish_raw_record(ring, header: bytes) -> None:
    """Writes one record header at the ring's write position and publishes it, as a writer
    that does not keep the ring's rules would."""
    position = ring.write_position
    ring.data[position % ring.capacity:position % ring.capacity + len(header)] = header
    ring.words[8] = position + 64  # the write position (line 1)


@pytest.mark.timeout(60)
async def test_corrupt_framing_in_the_call_ring_stops_the_actor_loudly_within_a_second():
    channel = ShmChannel(1)
    ref = await spawn_counter(channel)
    try:
        assert await ref.submit(PreparedCall("incr", SPECS["incr"], (1,))) == 1
        pending = ref.submit(PreparedCall("pid", SPECS["pid"]))
        await asyncio.sleep(0.1)
        start = time.monotonic()
        # kind 1 (a message), flags 3, a sequence number far from the next one
        _publish_raw_record(channel.call_ring.ring, struct.pack("<IHHQQ", 8, 1, 3, 999, 1))
        wake(channel.call_wake[0][0])
        await asyncio.wait_for(ref.exited.wait(), 5)
        assert time.monotonic() - start < 1.0
        assert ref.process.exitcode == FAILED_EXIT_CODE  # loudly, not a clean stop
        assert await pending > 0  # answered before the damage
        with pytest.raises(ActorDiedError, match="rank 0"):
            await ref.submit(PreparedCall("incr", SPECS["incr"], (1,)))
    finally:
        ref.kill_now()
        channel.close()


@pytest.mark.timeout(60)
async def test_corrupt_framing_in_a_reply_ring_fails_that_ranks_calls_and_kills_it():
    channel = ShmChannel(1)
    ref = await spawn_counter(channel)
    try:
        _publish_raw_record(channel.reply_rings[0].ring, struct.pack("<IHHQQ", 8, 7, 3, 2, 1))
        wake(channel.reply_wake[0])
        with pytest.raises(ActorDiedError, match="reply reader failed"):
            await asyncio.wait_for(ref.submit(PreparedCall("pid", SPECS["pid"])), 5)
        await asyncio.wait_for(ref.exited.wait(), 5)
    finally:
        ref.kill_now()
        channel.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("child_core", ["default", "python"])
async def test_messages_of_any_size_get_through_full_rings_in_order(child_core, monkeypatch):
    """Also with the child on the rings' Python implementation and this process on the
    compiled one (where built): both read and write the same memory."""
    if child_core == "python":
        monkeypatch.setenv("ACTOREXEC_SHM_PURE_PYTHON", "1")  # the child inherits it
    channel = ShmChannel(1, call_capacity=64 << 10, reply_capacity=64 << 10)
    ref = await spawn_counter(channel)
    echo = SPECS["echo"]
    try:
        if child_core == "python":
            assert await ref.submit(PreparedCall("ring_core", SPECS["ring_core"])) == "python"
        big = os.urandom(3 << 20)  # 48x either ring: travels in chunks
        assert await ref.submit(PreparedCall("echo", echo, (big,))) == big
        payloads = [os.urandom(4096) + b"%d" % i for i in range(300)]  # ~20x either ring
        futs = [ref.submit(PreparedCall("echo", echo, (p,))) for p in payloads]
        time.sleep(0.5)  # the caller's loop reads no reply meanwhile: both sides queue
        assert await asyncio.wait_for(asyncio.gather(*futs), 30) == payloads
        assert ref.process.exitcode is None
    finally:
        ref.kill_now()
        channel.close()


@pytest.mark.timeout(60)
async def test_a_method_off_the_allow_list_is_refused_over_shared_memory():
    channel = ShmChannel(1)
    ref = await spawn_counter(channel, start=5)
    try:
        with pytest.raises(MethodNotAllowedError):
            await ref.submit(PreparedCall("secret", generic_spec(), ([], {})))
        assert await ref.submit(PreparedCall("incr", SPECS["incr"], (0,))) == 5
    finally:
        ref.kill_now()
        channel.close()


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


@pytest.mark.timeout(60)
async def test_the_rings_are_memfd_memory_and_sigkill_leaves_nothing_in_dev_shm():
    before = set(os.listdir("/dev/shm"))
    channel = ShmChannel(1)
    ref = await spawn_counter(channel)
    try:
        for pid in (ref.pid, os.getpid()):
            maps = _maps(pid)
            assert "/memfd:actorexec-calls" in maps and "/memfd:actorexec-replies-0" in maps
            assert "/dev/shm/" not in "".join(line for line in maps.splitlines(True)
                                             if "actorexec" in line)
        os.kill(ref.pid, signal.SIGKILL)
        await asyncio.wait_for(ref.exited.wait(), 5)
    finally:
        ref.kill_now()
        channel.close()
    assert "memfd:actorexec" not in _maps(os.getpid())  # unmapped once the channel closed
    created = {n for n in set(os.listdir("/dev/shm")) - before if "actorexec" in n}
    assert not created


@pytest.mark.timeout(60)
async def test_a_reply_that_cannot_be_sent_stops_the_actor_and_fails_its_callers_within_a_second():
    channel = ShmChannel(1)
    ref = await spawn_counter(channel)
    try:
        start = time.monotonic()
        with pytest.raises(ActorDiedError, match="rank 0"):  # its own reply is the first
            await asyncio.wait_for(ref.submit(PreparedCall("break_replies",
                                                           SPECS["break_replies"])), 5)
        assert time.monotonic() - start < 1.0
        await asyncio.wait_for(ref.exited.wait(), 5)
        assert ref.process.exitcode not in (0, None)
    finally:
        ref.kill_now()
        channel.close()


async def _calls_on_this_loop() -> tuple[int, int]:
    channel = ShmChannel(1)
    ref = await spawn_counter(channel)
    try:
        results = await asyncio.gather(*(ref.submit(PreparedCall("incr", SPECS["incr"], (1,)))
                                         for _ in range(50)))
        return results[-1], await ref.submit(PreparedCall("pid", SPECS["pid"]))
    finally:
        ref.kill_now()
        channel.close()


@pytest.mark.parametrize("use_uvloop", [False, True])
@pytest.mark.timeout(60)
def test_shared_memory_works_on_the_default_loop_and_on_uvloop(use_uvloop):
    last, pid = run(_calls_on_this_loop(), use_uvloop=use_uvloop)
    assert last == 50 and pid != os.getpid()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
