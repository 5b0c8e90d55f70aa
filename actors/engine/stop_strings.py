"""Stop strings on streamed text: nothing that might begin a stop string is emitted early.

Text arrives in pieces (one per step), so a stop string can straddle pieces.
``StopStringMatcher.push`` emits only text that cannot be the start of a stop
string; the longest tail that is a proper prefix of one is held back until the
next piece decides it (``"Hello wo"`` with stop ``"world"`` emits ``"Hello "``
and holds ``"wo"``). On a match it emits the text before the stop string (the
stop string itself is never emitted) and reports the match; ``flush`` returns
the held tail when the request ends for another reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from actorexec.protocol import InvalidRequestError

MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256


def validate_stop_strings(stop: Sequence[str]) -> tuple[str, ...]:
    """The stop strings as a tuple; ``InvalidRequestError`` for empty or oversized ones."""
    if isinstance(stop, str):
        stop = (stop,)
    stops = tuple(stop)
    if len(stops) > MAX_STOP_STRINGS:
        raise InvalidRequestError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
    for s in stops:
        if not isinstance(s, str) or not s:
            raise InvalidRequestError(f"stop strings must be non-empty strings, got {s!r}")
        if len(s) > MAX_STOP_STRING_CHARS:
            raise InvalidRequestError(
                f"a stop string may have at most {MAX_STOP_STRING_CHARS} characters")
    return stops


class StopStringMatcher:
    """Finds the first stop string in a stream of text pieces, holding back ambiguous tails."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self._held = ""
        self.matched: str | None = None

    def push(self, text: str) -> tuple[str, bool]:
        """``(text safe to emit now, whether a stop string matched)``."""
        if self.matched is not None:
            return "", True
        buffer = self._held + text
        first: tuple[int, str] | None = None
        for stop in self.stops:
            at = buffer.find(stop)
            if at >= 0 and (first is None or at < first[0]):
                first = (at, stop)
        if first is not None:
            self._held = ""
            self.matched = first[1]
            return buffer[:first[0]], True
        keep = self._ambiguous_tail(buffer)
        self._held = buffer[len(buffer) - keep:]
        return buffer[:len(buffer) - keep], False

    def flush(self) -> str:
        """The held-back tail (the request ended without completing a stop string)."""
        held, self._held = self._held, ""
        return held

    def _ambiguous_tail(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:n]):
                    best = n
                    break
        return best
