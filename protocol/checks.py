"""Range checks for wire structs' ``__post_init__``: one wording, one set of bounds.

msgspec checks types only when it decodes; a struct built in Python (the
in-process backend passes objects, not bytes) is checked here as well, so
each helper checks the type too. Every failure is a :class:`ConfigError`
naming the struct, the field and the value. Counts and ids are bounded by
int32 (no sequence, vocabulary or cache comes near it, and GPU kernels may
hold them in int32 tensors); seeds by int64 (what ``torch.Generator`` takes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .errors import ConfigError

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _fail(owner: str, field: str, rule: str, value: object) -> ConfigError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else f"{shown[:60]}... ({len(shown)} characters)"
    return ConfigError(f"{owner}.{field} must be {rule}, got {shown}")


def check_int(owner: str, field: str, value: object, low: int, high: int = INT32_MAX) -> None:
    """An ``int`` (not a bool) in ``[low, high]``."""
    if type(value) is not int or not low <= value <= high:
        raise _fail(owner, field, f"an integer in [{low}, {high}]", value)


def check_float(owner: str, field: str, value: object, low: float = -math.inf,
                high: float = math.inf, *, low_open: bool = False) -> None:
    """A finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        try:
            number = float(value)  # type: ignore[arg-type]
        except OverflowError:
            ok = False
        else:
            ok = (math.isfinite(number) and (low < number if low_open else low <= number)
                  and number <= high)
    if not ok:
        if high == math.inf:
            rule = f"a finite number {'>' if low_open else '>='} {low}"
        else:
            rule = f"a finite number in {'(' if low_open else '['}{low}, {high}]"
        raise _fail(owner, field, rule, value)


def check_bool(owner: str, field: str, value: object) -> None:
    if type(value) is not bool:
        raise _fail(owner, field, "True or False", value)


def check_str(owner: str, field: str, value: object, max_len: int = 4096) -> None:
    """A non-empty printable string of at most ``max_len`` characters."""
    if type(value) is not str or not 0 < len(value) <= max_len or not value.isprintable():
        raise _fail(owner, field, f"a non-empty printable string of at most {max_len} characters",
                    value)


def check_choice(owner: str, field: str, value: object, choices: Iterable[object]) -> None:
    choices = tuple(choices)
    if type(value) is not str or value not in choices:
        raise _fail(owner, field, f"one of {choices}", value)
