"""Token logprobs in the two OpenAI shapes (legacy completions, and chat ``content`` lists).

A ``TokenLogprobs`` holds the sampled token first, then the top-n alternatives.
Token text is the token decoded alone (a partial UTF-8 character shows as
U+FFFD); ``bytes`` in the chat shape are that text's UTF-8 bytes, as vLLM does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from actorexec.actors.engine import Tokenizer
from actorexec.protocol import TokenLogprobs


def _finite(value: float) -> float:
    # JSON has no -inf; OpenAI clients expect a number.
    return value if math.isfinite(value) else -9999.0


def _text(tokenizer: Tokenizer | None, token_id: int) -> str:
    return tokenizer.decode([token_id]) if tokenizer is not None else f"token_id:{token_id}"


def completion_logprobs(tokenizer: Tokenizer | None, entries: Sequence[TokenLogprobs],
                        text_offset: int) -> tuple[dict[str, Any], int]:
    """The legacy ``logprobs`` object for these tokens, and the text offset after them."""
    tokens, token_logprobs, top, offsets = [], [], [], []
    for entry in entries:
        text = _text(tokenizer, entry.token_ids[0])
        tokens.append(text)
        token_logprobs.append(_finite(entry.logprobs[0]))
        top.append({_text(tokenizer, t): _finite(lp)
                    for t, lp in zip(entry.token_ids[1:], entry.logprobs[1:], strict=True)})
        offsets.append(text_offset)
        text_offset += len(text)
    return ({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top,
             "text_offset": offsets}, text_offset)


def _chat_entry(tokenizer: Tokenizer | None, token_id: int, logprob: float) -> dict[str, Any]:
    text = _text(tokenizer, token_id)
    return {"token": text, "logprob": _finite(logprob), "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokenizer: Tokenizer | None,
                  entries: Sequence[TokenLogprobs]) -> list[dict[str, Any]]:
    """The chat ``logprobs.content`` list for these tokens."""
    return [{**_chat_entry(tokenizer, e.token_ids[0], e.logprobs[0]),
             "top_logprobs": [_chat_entry(tokenizer, t, lp) for t, lp in
                              zip(e.token_ids[1:], e.logprobs[1:], strict=True)]}
            for e in entries]
