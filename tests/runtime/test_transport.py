"""Transports and actor processes, on both ZeroMQ backends, ipc and tcp, both loops."""

from __future__ import annotations

import asyncio
import os

import msgspec
import pytest
import zmq
import zmq.asyncio

from actorexec.protocol import (
    Call,
    EnvelopeCodec,
    Failure,
    MethodNotAllowedError,
    Result,
)
from actorexec.protocol.codec import generic_spec
from actorexec.runtime import PreparedCall, run, spawn_actor
from actorexec.runtime.endpoints import EndpointDir, tcp
from actorexec.runtime.transport import bind_router, connect_dealer

from .actors import Counter

BACKENDS = ["aiozmq", "pyzmq"]
COUNTER = "tests.runtime.actors:Counter"
SPECS = Counter.method_specs()


@pytest.fixture
def endpoints():
    d = EndpointDir()
    yield d
    d.cleanup()
    assert not os.path.exists(d.path)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["ipc", "tcp"])
@pytest.mark.timeout(30)
async def test_dealer_router_round_trip_keeps_order_without_loss(backend, kind, endpoints):
    endpoint = endpoints.ipc("t.sock") if kind == "ipc" else tcp("127.0.0.1")
    router = await bind_router(endpoint, backend)
    dealer = await connect_dealer(endpoint, backend)
    try:
        for i in range(2000):
            dealer.send([b"%d" % i])
        got = []
        for _ in range(2000):
            peer, body = await router.recv()
            got.append(int(body))
            router.send_to(peer, [body])
        assert got == list(range(2000))
        assert [int((await dealer.recv())[0]) for _ in range(2000)] == list(range(2000))
    finally:
        dealer.close()
        router.close()


def test_ipc_endpoints_live_in_a_private_directory(endpoints):
    assert os.stat(endpoints.path).st_mode & 0o777 == 0o700
    with pytest.raises(ValueError):
        tcp("0.0.0.0")


async def _raw_exchange(endpoint: str, frames: list[bytes]) -> list[bytes]:
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        await sock.send_multipart(frames)
        return await asyncio.wait_for(sock.recv_multipart(), 5)
    finally:
        sock.close()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.timeout(60)
async def test_garbage_and_refused_calls_leave_the_actor_serving_and_run_nothing(backend,
                                                                                endpoints):
    endpoint = endpoints.ipc("counter.sock")
    ref = await spawn_actor(COUNTER, {"start": 10}, rank=0, endpoint=endpoint, backend=backend)
    codec = EnvelopeCodec()
    try:
        reply = await _raw_exchange(endpoint, [b"\xc1garbage", b"more"])
        failure = codec.decode(reply[0])
        assert isinstance(failure, Failure) and failure.call_id == -1
        assert "ProtocolError" in failure.exc_type
        # a readable envelope with arguments of the wrong type: typed failure, nothing run
        bad = [codec.encode(Call(7, "incr")), msgspec.msgpack.encode({"by": "x"})]
        failure = codec.decode((await _raw_exchange(endpoint, bad))[0])
        assert failure.call_id == 7 and "ProtocolError" in failure.exc_type
        # a method off the allow-list
        with pytest.raises(MethodNotAllowedError):
            await ref.submit(PreparedCall("secret", generic_spec(), ([], {})))
        ok = [codec.encode(Call(8, "incr")), msgspec.msgpack.encode({"by": 1})]
        result = await _raw_exchange(endpoint, ok)
        assert isinstance(codec.decode(result[0]), Result)
        assert await ref.submit(PreparedCall("incr", SPECS["incr"], (1,))) == 12
    finally:
        await ref.submit(PreparedCall("shutdown", SPECS["shutdown"]))
        await ref.close(5)
    assert ref.process.exitcode == 0
    assert not os.listdir(endpoints.path)


async def _spawn_call_close(backend: str) -> tuple[int, int]:
    d = EndpointDir()
    try:
        ref = await spawn_actor(COUNTER, {"start": 0}, rank=3, endpoint=d.ipc("c.sock"),
                                backend=backend)
        try:
            results = await asyncio.gather(*(ref.submit(PreparedCall("incr", SPECS["incr"], (1,)))
                                             for _ in range(50)))
            pid = await ref.submit(PreparedCall("pid", SPECS["pid"]))
        finally:
            ref.kill_now()
        return results[-1], pid
    finally:
        d.cleanup()


@pytest.mark.parametrize("use_uvloop", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.timeout(60)
def test_the_runtime_works_on_the_default_loop_and_on_uvloop(use_uvloop, backend):
    last, pid = run(_spawn_call_close(backend), use_uvloop=use_uvloop)
    assert last == 50 and pid != os.getpid()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
