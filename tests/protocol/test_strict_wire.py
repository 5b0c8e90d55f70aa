"""Every struct on the wire is strict: an unknown field at any depth, an extra array
element, an out-of-range value or a tensor frame that lies is a ProtocolError."""

from __future__ import annotations

import importlib
import math
import pkgutil
from typing import Any

import msgspec
import pytest
import torch

import actorexec.protocol as protocol
from actorexec.protocol import Config, KVCacheConfig, ModelRunnerOutput, ProtocolError
from actorexec.protocol.codec import EnvelopeCodec, PayloadDecoder, PayloadEncoder, TensorRef
from actorexec.protocol.envelopes import Call, Failure, Ready, Result
from tests.protocol.test_codec import Target, a_scheduler_output

encode = msgspec.msgpack.encode


def _wire_structs() -> set[type[msgspec.Struct]]:
    """Every Struct defined in a protocol module, and every Struct their fields reach."""
    roots: list[Any] = []
    for module in pkgutil.iter_modules(protocol.__path__):
        mod = importlib.import_module(f"{protocol.__name__}.{module.name}")
        roots += [v for v in vars(mod).values()
                  if isinstance(v, type) and issubclass(v, msgspec.Struct)
                  and v is not msgspec.Struct]
    found: set[type[msgspec.Struct]] = set()

    def visit(node: Any) -> None:
        if isinstance(node, msgspec.inspect.StructType):
            if node.cls in found:
                return
            found.add(node.cls)
        if isinstance(node, (msgspec.inspect.Type, msgspec.inspect.Field)):
            for name in msgspec.structs.fields(node):
                visit(getattr(node, name.name))
        elif isinstance(node, tuple):
            for item in node:
                visit(item)

    for root in roots:
        visit(msgspec.inspect.type_info(root))
    return found


def test_every_struct_reachable_from_the_protocol_package_forbids_unknown_fields() -> None:
    structs = _wire_structs()
    names = {cls.__name__ for cls in structs}
    assert {"SchedulerOutput", "NewRequestData", "CachedRequestData", "SamplingParams",
            "Config", "ModelConfig", "ModelRunnerOutput", "TokenLogprobs", "Call",
            "TensorRef", "KVCacheConfig", "KVCacheSpec"} <= names
    lax = sorted(cls.__qualname__ for cls in structs
                 if not cls.__struct_config__.forbid_unknown_fields)
    assert lax == [], f"wire structs that silently drop unknown fields: {lax}"


def _call_frames(args: dict[str, Any]) -> list[bytes]:
    return [encode(args)]


def _so_with(path: tuple[str | int, ...], key: str) -> dict[str, Any]:
    """A valid execute_model argument map with ``key`` added at ``path``."""
    raw = msgspec.to_builtins(a_scheduler_output(), builtin_types=(bytes, bytearray))
    raw.setdefault("scheduled_cached_reqs", {})
    node: Any = raw
    for step in path:
        node = node[step]
    node[key] = 0
    return {"scheduler_output": raw}


@pytest.mark.parametrize("path", [
    (), ("scheduled_new_reqs", 0), ("scheduled_new_reqs", 0, "sampling_params"),
    ("scheduled_cached_reqs",)])
def test_an_unknown_field_at_any_depth_of_a_step_is_refused(path) -> None:
    spec = protocol.codec.build_method_specs(Target, ["execute_model"])["execute_model"]
    valid = {"scheduler_output": msgspec.to_builtins(a_scheduler_output(),
                                                     builtin_types=(bytes, bytearray))}
    assert spec.decode_args(_call_frames(valid))["scheduler_output"] == a_scheduler_output()
    with pytest.raises(ProtocolError, match="unknown field `temperture`"):
        spec.decode_args(_call_frames(_so_with(path, "temperture")))


@pytest.mark.parametrize("type_, raw", [
    (Config, {"model": {"model": "/m", "modle": "x"}}),
    (Config, {"model": {"model": "/m"}, "cache": {"block_size": 16, "blocksize": 8}}),
    (ModelRunnerOutput, {"req_ids": [], "sampled_token_ids": b""}),
    (KVCacheConfig, {"num_blocks": 4, "kv_cache_groups": [{"layer_names": ["l0"], "kv_cache_spec": {
        "block_size": 16, "num_kv_heads": 2, "head_size": 8, "dtype": "float16", "x": 1}}]}),
])
def test_unknown_fields_in_configs_and_results_are_refused(type_, raw) -> None:
    with pytest.raises(ProtocolError, match="unknown field"):
        PayloadDecoder(type_).decode([encode(raw)])


@pytest.mark.parametrize("envelope", [Call(1, "add", 12.5, True), Result(3),
                                      Failure(4, "ValueError", "bad", "tb"), Ready(0, 123)])
def test_an_envelope_with_an_extra_trailing_element_is_refused(envelope) -> None:
    codec = EnvelopeCodec()
    extra = encode([*msgspec.msgpack.decode(codec.encode(envelope)), "extra"])
    with pytest.raises(ProtocolError):
        codec.decode(extra)


@pytest.mark.parametrize("field, value", [
    ("top_k", 2**63), ("seed", 2**64 - 1), ("temperature", math.nan), ("temperature", math.inf),
    ("presence_penalty", math.nan), ("frequency_penalty", 7.0), ("top_k", -5),
    ("stop_token_ids", [-1]), ("max_tokens", 2**40), ("repetition_penalty", math.inf)])
def test_out_of_range_sampling_params_on_the_wire_are_protocol_errors(field, value) -> None:
    spec = protocol.codec.build_method_specs(Target, ["execute_model"])["execute_model"]
    args = _so_with(("scheduled_new_reqs", 0, "sampling_params"), "seed")
    args["scheduler_output"]["scheduled_new_reqs"][0]["sampling_params"][field] = value
    with pytest.raises(ProtocolError, match=f"SamplingParams.{field}"):
        spec.decode_args(_call_frames(args))


def _tensor_frames(ref: list[Any], buffers: list[bytes]) -> list[bytes]:
    return [encode({"t": ref}), *buffers]


FOUR_FLOATS = bytes(16)


@pytest.mark.parametrize("ref, buffers, message", [
    ([-1, "float32", [4]], [FOUR_FLOATS], "frame index -1"),
    ([1, "float32", [4]], [FOUR_FLOATS], "frame index 1"),
    ([0, "float32", [4]], [], "frame index 0"),  # no tensor frame at all (the one-frame path)
    ([0, "float32", [5]], [FOUR_FLOATS], "needs 20"),
    ([0, "float32", [3]], [FOUR_FLOATS], "needs 12"),
    ([0, "float32", [4]], [FOUR_FLOATS[:-1]], "holds 15 bytes"),
    ([0, "float32", [-4, -1]], [FOUR_FLOATS], "shape"),
    ([0, "complex64", [2]], [FOUR_FLOATS], "dtype"),
    ([0, "Tensor", [2]], [FOUR_FLOATS], "dtype"),
    ([0, "float32", [4]], [FOUR_FLOATS, b"x"], "does not reference"),
    ([0, "float32", [4], "extra"], [FOUR_FLOATS], "at most length 3"),
    (["0", "float32", [4]], [FOUR_FLOATS], "Expected `int`"),
])
def test_a_tensor_frame_that_lies_is_a_protocol_error(ref, buffers, message) -> None:
    decoder = PayloadDecoder(dict[str, torch.Tensor])
    with pytest.raises(ProtocolError, match=message):
        decoder.decode(_tensor_frames(ref, buffers))
    # The decoder is reusable afterwards: a good message still decodes.
    good = decoder.decode(_tensor_frames([0, "float32", [2, 2]], [FOUR_FLOATS]))
    assert good["t"].shape == (2, 2)


def test_one_frame_referenced_twice_is_a_protocol_error() -> None:
    frames = [encode({"a": [0, "uint8", [2]], "b": [0, "uint8", [2]]}), b"ab"]
    with pytest.raises(ProtocolError, match="used twice"):
        PayloadDecoder(dict[str, torch.Tensor]).decode(frames)


@pytest.mark.parametrize("shape", [[0], [3, 0, 2], []])
def test_empty_and_scalar_tensors_round_trip(shape) -> None:
    tensor = torch.ones(shape, dtype=torch.bfloat16)
    frames = PayloadEncoder().encode({"t": tensor})
    decoded = PayloadDecoder(dict[str, torch.Tensor]).decode([bytes(f) for f in frames])["t"]
    assert decoded.shape == tensor.shape and torch.equal(decoded, tensor)


def test_tensors_of_dtypes_off_the_wire_list_are_refused_at_the_sender() -> None:
    with pytest.raises(TypeError, match="complex64"):
        PayloadEncoder().encode({"t": torch.zeros(2, dtype=torch.complex64)})
    assert TensorRef.__struct_config__.array_like
