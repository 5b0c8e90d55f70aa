"""The one codec: envelopes, typed payloads, and out-of-band tensor frames.

Encoders and decoders are built once (per channel, per method) and reused.
Decoding is strict: a frame that is malformed, has an unknown tag, an unknown
field (at any depth: every wire Struct forbids them), an extra array element,
a wrong type or a value out of range raises :class:`ProtocolError`, and
nothing runs. Tensors never go through msgpack: each becomes a ``TensorRef``
(frame index, dtype, shape) in the payload and its bytes travel as a frame of
their own; a reference to a missing frame, a dtype off the list, a negative
dimension, a byte length that does not match the shape, or a frame that no
reference uses is a ``ProtocolError`` too. torch is imported lazily, only
when a tensor is actually encoded or decoded.
"""

from __future__ import annotations

import ctypes
import functools
import inspect
import itertools
import math
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from .envelopes import Call, Envelope, Failure, Ready, Result
from .errors import ProtocolError

Frame = bytes | bytearray | memoryview
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError, IndexError)


# The dtypes a tensor may cross the wire as (torch names); the encoder refuses others.
WIRE_DTYPES = frozenset({"float64", "float32", "float16", "bfloat16", "int64", "int32", "int16",
                         "int8", "uint8", "bool"})
_MAX_NDIM = 64


class TensorRef(msgspec.Struct, array_like=True, gc=False, forbid_unknown_fields=True):
    """Where a tensor's bytes are: ``frame`` indexes the buffers after the payload."""

    frame: int
    dtype: str
    shape: list[int]


def _byte_view(flat: Any) -> memoryview:
    """A zero-copy memoryview of a contiguous uint8 CPU tensor (no numpy needed).

    The view keeps the tensor alive through the ctypes array it is built on.
    """
    array = (ctypes.c_ubyte * flat.numel()).from_address(flat.data_ptr())
    array._owner = flat  # type: ignore[attr-defined]
    return memoryview(array).cast("B")


def _is_tensor(obj: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


class PayloadEncoder:
    """Encodes one value to ``[payload, *tensor_buffers]``; tensors go out-of-band.

    A contiguous CPU tensor's bytes are sent without a copy; any other tensor
    is first copied once (to the CPU, or into contiguous memory).
    """

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder(enc_hook=self._enc_hook)
        self._buffers: list[memoryview] | None = None

    def encode(self, value: Any) -> list[Frame]:
        self._buffers = []
        try:
            payload = self._encoder.encode(value)
            return [payload, *self._buffers]
        finally:
            self._buffers = None

    def _enc_hook(self, obj: Any) -> Any:
        if _is_tensor(obj) and self._buffers is not None:
            import torch

            dtype = str(obj.dtype).removeprefix("torch.")
            if dtype not in WIRE_DTYPES:
                raise TypeError(f"tensors of dtype {dtype} do not cross the wire "
                                f"(allowed: {sorted(WIRE_DTYPES)})")
            tensor = obj.detach().to("cpu").contiguous()
            flat = tensor.reshape(-1).view(torch.uint8)  # any dtype, bfloat16 included
            self._buffers.append(_byte_view(flat))
            return TensorRef(frame=len(self._buffers) - 1, dtype=dtype, shape=list(tensor.shape))
        raise TypeError(f"cannot encode {type(obj).__qualname__} on the wire (no pickle)")


class PayloadDecoder:
    """Decodes ``[payload, *tensor_buffers]`` strictly into ``type_``."""

    def __init__(self, type_: Any) -> None:
        self.type = type_
        self._decoder = msgspec.msgpack.Decoder(type_, dec_hook=self._dec_hook)
        self._buffers: Sequence[Frame] = ()
        self._used: set[int] = set()

    def decode(self, frames: Sequence[Frame]) -> Any:
        if len(frames) == 1:  # no tensor frames (most messages): no per-call state
            try:
                return self._decoder.decode(frames[0])
            except _DECODE_ERRORS as exc:  # (a tensor reference finds no frame: refused)
                raise ProtocolError(f"bad payload for {_type_name(self.type)}: {exc}") from exc
        if not frames:
            raise ProtocolError("message has no payload frame")
        self._buffers, self._used = frames[1:], set()
        try:
            value = self._decoder.decode(frames[0])
            if len(self._used) != len(self._buffers):
                raise ProtocolError(f"{len(self._buffers) - len(self._used)} tensor frame(s) "
                                    "that the payload does not reference")
            return value
        except _DECODE_ERRORS as exc:
            raise ProtocolError(f"bad payload for {_type_name(self.type)}: {exc}") from exc
        finally:
            self._buffers, self._used = (), set()

    def _dec_hook(self, type_: Any, obj: Any) -> Any:
        if getattr(type_, "__module__", "") == "torch" and type_.__name__ == "Tensor":
            return self._tensor(msgspec.convert(obj, TensorRef))
        raise TypeError(f"unsupported type {type_!r}")

    def _tensor(self, ref: TensorRef) -> Any:
        """The tensor ``ref`` describes, after checking it against its frame."""
        import torch

        if not 0 <= ref.frame < len(self._buffers) or ref.frame in self._used:
            raise ProtocolError(f"tensor frame index {ref.frame} is not one of the "
                                f"{len(self._buffers)} frames, or is used twice")
        if ref.dtype not in WIRE_DTYPES:
            raise ProtocolError(f"tensor dtype {ref.dtype!r} is not one of {sorted(WIRE_DTYPES)}")
        if len(ref.shape) > _MAX_NDIM or any(d < 0 for d in ref.shape):
            raise ProtocolError(f"bad tensor shape {ref.shape[:8]}")
        dtype = getattr(torch, ref.dtype)
        buffer = memoryview(self._buffers[ref.frame])
        if buffer.nbytes != math.prod(ref.shape) * dtype.itemsize:
            raise ProtocolError(f"tensor frame {ref.frame} holds {buffer.nbytes} bytes, but a "
                                f"{ref.dtype} tensor of shape {ref.shape} needs "
                                f"{math.prod(ref.shape) * dtype.itemsize}")
        self._used.add(ref.frame)
        if buffer.nbytes == 0:
            return torch.empty(ref.shape, dtype=dtype)
        # bytearray copy: zmq frames are read-only and the tensor must own its memory.
        raw = torch.frombuffer(bytearray(buffer), dtype=torch.uint8)
        return raw.view(dtype).reshape(ref.shape)


def _type_name(type_: Any) -> str:
    return getattr(type_, "__name__", None) or repr(type_)


class EnvelopeCodec:
    """Encodes and strictly decodes envelope frames (the tagged union)."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(Envelope)

    def encode(self, envelope: Call | Result | Failure | Ready) -> bytes:
        return self._encoder.encode(envelope)

    def decode(self, frame: Frame) -> Call | Result | Failure | Ready:
        try:
            return self._decoder.decode(frame)
        except _DECODE_ERRORS as exc:
            raise ProtocolError(f"bad envelope frame: {exc}") from exc


class MethodSpec:
    """The wire signature of one allow-listed method, built once from its type hints.

    Arguments travel as a map keyed by parameter name and decode into a
    generated Struct that forbids unknown fields; the return value decodes
    into the return annotation. Both sides (caller and actor) build the same
    spec from the same class.
    """

    def __init__(self, func: Callable[..., Any], name: str | None = None) -> None:
        self.name = name or func.__name__
        self.signature = inspect.signature(func)
        hints = typing.get_type_hints(func)
        fields: list[tuple[Any, ...]] = []
        params = list(self.signature.parameters.values())
        if params and params[0].name in ("self", "cls"):
            params = params[1:]
            self.signature = self.signature.replace(parameters=params)
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"RPC method {self.name} may not take *args or **kwargs")
            type_ = hints.get(p.name, Any)
            fields.append((p.name, type_) if p.default is p.empty else (p.name, type_, p.default))
        # For the fast path of bind(): the names positional arguments bind to, in order, and
        # how many parameters have no default.
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self._positional = tuple(p.name for p in itertools.takewhile(
            lambda p: p.kind in positional, params))
        self._required = sum(1 for p in params if p.default is p.empty)
        self.args_type = msgspec.defstruct(f"{self.name}_args", fields, kw_only=True,
                                           forbid_unknown_fields=True)
        returns = hints.get("return", Any)
        self.return_type = Any if returns is inspect.Signature.empty else returns
        self.args_decoder = PayloadDecoder(self.args_type)
        self.result_decoder = PayloadDecoder(self.return_type)

    def bind(self, args: Sequence[Any], kwargs: dict[str, Any] | None) -> dict[str, Any]:
        """Map a call's arguments to names; a wrong call raises TypeError at the caller.
        Positional calls take a fast path (``inspect.Signature.bind`` costs ~8 µs a call;
        this, ~0.5 µs); anything unusual goes to ``Signature.bind``, which raises."""
        if not kwargs and self._required <= len(args) <= len(self._positional):
            return dict(zip(self._positional, args, strict=False))
        return dict(self.signature.bind(*args, **(kwargs or {})).arguments)

    def decode_args(self, frames: Sequence[Frame]) -> dict[str, Any]:
        decoded = self.args_decoder.decode(frames)
        return {f: getattr(decoded, f) for f in self.args_type.__struct_fields__}


def build_method_specs(cls: type, names: Sequence[str]) -> dict[str, MethodSpec]:
    """Specs for the allow-listed methods ``names`` of ``cls``."""
    return {name: MethodSpec(getattr(cls, name), name) for name in names}


@functools.cache
def generic_spec() -> MethodSpec:
    """A spec for calls by function path (trusted opt-in): untyped args and result.

    Built once and shared: callers on a per-call path get the same instance.
    """

    def call(args: list[Any], kwargs: dict[str, Any]) -> Any:  # pragma: no cover - signature only
        ...

    return MethodSpec(call, "call_by_path")


__all__ = [
    "Envelope", "EnvelopeCodec", "Frame", "MethodSpec", "PayloadDecoder", "PayloadEncoder",
    "TensorRef", "build_method_specs", "generic_spec",
]
