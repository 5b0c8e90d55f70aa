"""One request's output text: incremental detokenization, then stop strings."""

from __future__ import annotations

from collections.abc import Sequence

from .detokenizer import Detokenizer
from .stop_strings import StopStringMatcher


class TextStream:
    """Turns each step's new tokens into the text a client may see now.

    Text held back by the detokenizer (an unfinished character) or by the
    stop matcher (a possible stop-string start) is released when the request
    finishes. As in vLLM, stop strings are looked for only once ``min_tokens``
    outputs exist, and only in the output (never in the prompt).
    """

    def __init__(self, detokenizer: Detokenizer, stops: Sequence[str] = (),
                 min_tokens: int = 0) -> None:
        self._detokenizer = detokenizer
        self._matcher = StopStringMatcher(stops) if stops else None
        self._min_tokens = min_tokens

    @property
    def matched_stop(self) -> str | None:
        return self._matcher.matched if self._matcher is not None else None

    def push(self, token_ids: Sequence[int], num_output_tokens: int,
             finished: bool) -> tuple[str, bool]:
        """``(text to emit, whether a stop string ended the request here)``."""
        text = self._detokenizer.step(token_ids)
        if finished:
            text += self._detokenizer.finish()
        if self._matcher is None:
            return text, False
        if num_output_tokens < self._min_tokens:
            return self._matcher.flush() + text, False
        emit, stopped = self._matcher.push(text)
        if finished and not stopped:
            emit += self._matcher.flush()
        return emit, stopped
