"""The codec decodes strictly, keeps tensors out of msgpack, and never pickles."""

from __future__ import annotations

import msgspec
import pytest
import torch

from actorexec.protocol import (
    KVCacheSpec,
    ModelRunnerOutput,
    NewRequestData,
    ProtocolError,
    SamplingParams,
    SchedulerOutput,
    TokenLogprobs,
)
from actorexec.protocol.codec import (
    EnvelopeCodec,
    PayloadDecoder,
    PayloadEncoder,
    build_method_specs,
)
from actorexec.protocol.envelopes import Call, Failure, Ready, Result
from actorexec.protocol.kv_cache import make_kv_cache_configs


class Target:
    def execute_model(self, scheduler_output: SchedulerOutput,
                      extra: torch.Tensor | None = None) -> ModelRunnerOutput | None: ...

    def add(self, a: int, b: int = 2) -> int: ...


def a_scheduler_output() -> SchedulerOutput:
    req = NewRequestData(req_id="r0", slot=0, prompt_token_ids=[1, 2, 3],
                         sampling_params=SamplingParams(temperature=0.0, seed=7), block_ids=[4])
    so = SchedulerOutput(step_id=9)
    so.add_new(req, num_scheduled_tokens=3)
    return so


@pytest.mark.parametrize("envelope", [Call(1, "add", 12.5), Call(2, "x", None, False),
                                      Result(3), Failure(4, "ValueError", "bad", "tb"),
                                      Ready(0, 123)])
def test_every_envelope_round_trips(envelope) -> None:
    codec = EnvelopeCodec()
    assert codec.decode(codec.encode(envelope)) == envelope


@pytest.mark.parametrize("frame", [b"", b"\xc1", b"garbage", msgspec.msgpack.encode(["nope", 1]),
                                   msgspec.msgpack.encode(["call", "not-an-int", "m"])])
def test_malformed_envelope_raises_protocol_error(frame) -> None:
    with pytest.raises(ProtocolError):
        EnvelopeCodec().decode(frame)


def test_method_args_decode_typed_and_strict() -> None:
    specs = build_method_specs(Target, ["execute_model", "add"])
    encoder = PayloadEncoder()
    so = a_scheduler_output()
    frames = encoder.encode(specs["execute_model"].bind([so], None))
    decoded = specs["execute_model"].decode_args(frames)
    assert decoded["scheduler_output"] == so and decoded["extra"] is None
    add_frames = encoder.encode(specs["add"].bind([1], None))
    assert specs["add"].decode_args(add_frames) == {"a": 1, "b": 2}
    with pytest.raises(ProtocolError, match="unknown field"):
        specs["add"].decode_args([msgspec.msgpack.encode({"a": 1, "c": 3})])
    with pytest.raises(ProtocolError):
        specs["add"].decode_args([msgspec.msgpack.encode({"a": "one"})])
    with pytest.raises(TypeError):
        specs["add"].bind([1, 2, 3], None)


def test_results_decode_into_their_declared_type() -> None:
    spec = build_method_specs(Target, ["execute_model"])["execute_model"]
    out = ModelRunnerOutput.from_lists(1, [[5], []],
                                       {0: [TokenLogprobs([5, 6], [-0.1, -2.0], 1)]})
    decoded = spec.result_decoder.decode(PayloadEncoder().encode(out))
    assert isinstance(decoded, ModelRunnerOutput) and decoded == out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.float16])
def test_tensors_travel_as_out_of_band_frames(dtype) -> None:
    tensor = (torch.arange(24) - 7).to(dtype).reshape(2, 3, 4)
    frames = PayloadEncoder().encode({"t": tensor})
    assert len(frames) == 2
    assert tensor.numel() * tensor.element_size() == memoryview(frames[1]).nbytes
    assert len(frames[0]) < 64  # the payload holds only the reference
    decoded = PayloadDecoder(dict[str, torch.Tensor]).decode([bytes(f) for f in frames])
    assert decoded["t"].dtype == dtype and torch.equal(decoded["t"], tensor)


def test_unencodable_objects_are_refused_rather_than_pickled() -> None:
    with pytest.raises(TypeError, match="no pickle"):
        PayloadEncoder().encode({"f": object()})


def test_kv_cache_configs_share_the_smallest_block_count() -> None:
    spec = KVCacheSpec(block_size=16, num_kv_heads=2, head_size=64, dtype="float16")
    assert spec.page_size_bytes == 2 * 16 * 2 * 64 * 2
    specs = [{"l0": spec, "l1": spec}, {"l2": spec}]
    configs = make_kv_cache_configs(specs, [spec.page_size_bytes * 20, spec.page_size_bytes * 30])
    assert [c.num_blocks for c in configs] == [10, 10]
    assert configs[1].kv_cache_groups[0].layer_names == ("l2",)
