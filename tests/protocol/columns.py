"""Test helper: an int32 wire column (``actorexec.protocol.columns``) as a list."""

from __future__ import annotations

from actorexec.protocol.columns import Column, int32s


def ints(column: Column) -> list[int]:
    return int32s(column).tolist()
