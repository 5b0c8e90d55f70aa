"""Int32 columns: how a step's and an output's per-request numbers travel.

A column is the int32 values of a list of ints, as little-endian bytes: one
msgpack ``bin`` on the wire and one object to decode. The same numbers as a
``list[int]`` cost one Python object each to decode, and a ``list[list[int]]``
of one-token lists two (a 256-request decode step was ~1,300 objects, ~49 µs
of decoding on a warm core and 3x that on one that slept between steps;
``docs/runtime.md``). Ragged data (each request's new tokens) is a flat
column plus a column of per-request counts: request ``i``'s values follow
request ``i - 1``'s.

Readers view a column with :func:`int32s` (a ``memoryview``, no copy); a
column whose length is not a multiple of 4 fails there with ``ValueError``.
Every int32 fits token ids, block ids, positions and counts (``checks.py``
bounds them by int32 too). actorexec runs on little-endian hosts only
(x86-64, aarch64), so native int32 *is* the wire format.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable
from itertools import accumulate

if sys.byteorder != "little" or array("i").itemsize != 4:  # pragma: no cover
    raise ImportError("actorexec's wire columns need a little-endian host with 4-byte C ints")

INT32_BYTES = 4
Column = bytes | bytearray


def pack_int32(values: Iterable[int]) -> bytes:
    """The column of ``values``; ``OverflowError`` if one is outside int32."""
    return array("i", values).tobytes()


def int32s(column: Column) -> memoryview:
    """A read-only int32 view of ``column``; ``ValueError`` if its length is not a multiple of 4."""
    if len(column) % INT32_BYTES:
        raise ValueError(f"an int32 column holds a multiple of 4 bytes, got {len(column)}")
    return memoryview(column).toreadonly().cast("i")


def num_values(column: Column) -> int:
    """How many int32 values ``column`` holds (it may be misaligned; ``int32s`` checks)."""
    return len(column) // INT32_BYTES


def ragged_mismatch(counts: memoryview, flat: memoryview) -> str | None:
    """Why ``flat`` cannot be cut into consecutive runs of ``counts[i]`` values (a negative
    count, or counts that do not add up to ``len(flat)``); None if it can."""
    if counts and min(counts) < 0:
        return f"a ragged column's counts must be >= 0, got {min(counts)}"
    if (total := sum(counts)) != len(flat):
        return (f"a ragged column's counts add up to {total} values, its flat column holds "
                f"{len(flat)}")
    return None


def split_ragged(counts: memoryview, flat: memoryview) -> list[list[int]]:
    """``flat`` cut into consecutive runs of ``counts[i]`` values, as lists (tests, the engine).

    Raises ``ValueError`` (``ragged_mismatch``'s reason) if the counts do not fit ``flat``.
    """
    if (why := ragged_mismatch(counts, flat)) is not None:
        raise ValueError(why)
    ends = accumulate(counts)
    values = flat.tolist()
    return [values[end - n:end] for n, end in zip(counts, ends, strict=True)]
