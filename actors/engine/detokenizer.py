"""Incremental detokenization: the text each new token adds, without re-decoding the output.

Token-by-token decoding is wrong for most tokenizers: a byte-level BPE token
may hold half a UTF-8 character, and SentencePiece (Metaspace) decoders drop
the leading space of whatever token comes first in a ``decode`` call. So each
step decodes a short window twice, with and without the new tokens, and emits
the difference (vLLM's prefix/read-offset scheme):

    ids:   ... prompt tail | emitted ... | new
                 ^prefix     ^read
    delta = decode(ids[prefix:])[len(decode(ids[prefix:read])):]

The window starts on the last few prompt tokens, so the first generated word
keeps its leading space; it slides forward whenever text is emitted, so a step
costs O(window), not O(output) as re-decoding everything would. The prompt
context must start on a character boundary: byte-fallback decoders turn a
whole run of byte tokens into U+FFFD when its first bytes are a character's
tail, so the shortest tail that decodes cleanly is taken (as vLLM does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

# Prompt tokens kept as context for the first output token (vLLM uses 4-24 too):
# enough for a decoder to see that the output does not start the text.
PROMPT_CONTEXT_TOKENS = 5
MAX_PROMPT_CONTEXT_TOKENS = 24
REPLACEMENT = "\ufffd"


def prompt_context(prompt_token_ids: Sequence[int],
                   decode: Callable[[Sequence[int]], str]) -> list[int]:
    """The shortest prompt tail (from 5 tokens) that starts on a character boundary."""
    ids = list(prompt_token_ids)
    if len(ids) <= PROMPT_CONTEXT_TOKENS:
        return ids
    for n in range(PROMPT_CONTEXT_TOKENS, min(len(ids), MAX_PROMPT_CONTEXT_TOKENS) + 1):
        if REPLACEMENT not in decode(ids[-n:]):
            return ids[-n:]
    return ids      # a prompt with U+FFFD of its own: the whole of it (once; the window slides)


class Detokenizer(Protocol):
    """Turns a request's output tokens into text, a step at a time."""

    def step(self, token_ids: Sequence[int]) -> str:
        """Text completed by these new tokens (``""`` while a character is unfinished)."""
        ...

    def finish(self) -> str:
        """Whatever is still held back (an unfinished UTF-8 tail, as U+FFFD)."""
        ...


class IncrementalDetokenizer:
    """Detokenizes through any ``decode(ids) -> str`` (e.g. an HF ``tokenizers.Tokenizer``)."""

    def __init__(self, decode: Callable[[Sequence[int]], str],
                 prompt_token_ids: Sequence[int] = ()) -> None:
        self._decode = decode
        self._ids = prompt_context(prompt_token_ids, decode)
        self._prefix = 0                 # window start: context for the decoder
        self._read = len(self._ids)      # everything before this has been emitted

    def _pending(self) -> tuple[str, str]:
        return self._decode(self._ids[self._prefix:self._read]), \
            self._decode(self._ids[self._prefix:])

    def step(self, token_ids: Sequence[int]) -> str:
        if not token_ids:
            return ""
        self._ids += token_ids
        before, after = self._pending()
        # A trailing U+FFFD is a character still missing bytes: wait for them.
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return ""
        # Slide the window: keep the emitted tokens' tail as the next context.
        del self._ids[:self._read]
        self._prefix, self._read = 0, len(self._ids)
        return after[len(before):]

    def finish(self) -> str:
        before, after = self._pending()
        self._read = len(self._ids)
        return after[len(before):] if len(after) > len(before) else ""
