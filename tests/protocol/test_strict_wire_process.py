"""Malformed frames sent to a real actor process over a real socket: each is answered with
a ProtocolError and runs nothing; the actor keeps serving (issue 8, defect 8)."""

from __future__ import annotations

import asyncio
import os

import msgspec
import pytest
import zmq
import zmq.asyncio

from actorexec.protocol.codec import EnvelopeCodec
from actorexec.protocol.envelopes import Call, Failure, Result
from actorexec.runtime import PreparedCall, spawn_actor
from actorexec.runtime.endpoints import EndpointDir
from tests.protocol.step_sink import StepSink
from tests.protocol.test_codec import a_scheduler_output

SPECS = StepSink.method_specs()
encode = msgspec.msgpack.encode
CODEC = EnvelopeCodec()


def _step(**extra_sampling: object) -> dict:
    step = msgspec.to_builtins(a_scheduler_output(), builtin_types=(bytes, bytearray))
    step["scheduled_new_reqs"][0]["sampling_params"].update(extra_sampling)
    return step


def _call(call_id: int, args: dict, *buffers: bytes, envelope_extra: tuple = ()) -> list[bytes]:
    envelope = [*msgspec.msgpack.decode(CODEC.encode(Call(call_id, "take"))), *envelope_extra]
    return [encode(envelope), encode(args), *buffers]


MALFORMED = {
    "extra envelope element": _call(1, {"step": _step()}, envelope_extra=("extra",)),
    "unknown nested field": _call(2, {"step": _step(temperture=0.0)}),
    "out-of-range value": _call(3, {"step": _step(top_k=2**63)}),
    "frame index -1": _call(4, {"step": _step(), "extra": [-1, "float32", [2]]}, bytes(8)),
    "lying shape": _call(5, {"step": _step(), "extra": [0, "float32", [3]]}, bytes(8)),
    "lying byte length": _call(6, {"step": _step(), "extra": [0, "float32", [2]]}, bytes(7)),
    "unreferenced frame": _call(7, {"step": _step()}, bytes(8)),
}


async def _exchange(endpoint: str, frames: list[bytes]) -> list[bytes]:
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        await sock.send_multipart(frames)
        return await asyncio.wait_for(sock.recv_multipart(), 5)
    finally:
        sock.close()


@pytest.mark.parametrize("backend", ["aiozmq", "pyzmq"])
@pytest.mark.timeout(60)
async def test_malformed_frames_are_protocol_errors_and_run_nothing(backend):
    endpoints = EndpointDir()
    ref = await spawn_actor("tests.protocol.step_sink:StepSink", {}, rank=0,
                            endpoint=endpoints.ipc("sink.sock"), backend=backend)
    endpoint = endpoints.ipc("sink.sock")
    try:
        not_refused = []
        for case, frames in MALFORMED.items():
            reply = CODEC.decode((await _exchange(endpoint, frames))[0])
            if not (isinstance(reply, Failure) and "ProtocolError" in reply.exc_type):
                not_refused.append((case, reply))
        assert not_refused == []
        assert await ref.submit(PreparedCall("count", SPECS["count"])) == 0   # nothing ran
        good = _call(9, {"step": _step(), "extra": [0, "float32", [2]]}, bytes(8))
        assert isinstance(CODEC.decode((await _exchange(endpoint, good))[0]), Result)
        assert await ref.submit(PreparedCall("count", SPECS["count"])) == 1
    finally:
        await ref.submit(PreparedCall("shutdown", SPECS["shutdown"]))
        await ref.close(5)
        endpoints.cleanup()
    assert not os.path.exists(endpoints.path)
