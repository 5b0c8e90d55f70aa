"""Request bodies of the OpenAI-compatible API, as typed msgspec Structs.

Decoding a body checks every field's type (a wrong type is a 400 naming the
field) and rejects unknown fields, so a misspelt parameter (``max_token``) is
an error instead of being silently ignored. Fields after ``# extras`` are
vLLM's additions to the OpenAI schema (``extra_body`` in the openai client).
Chat messages stay plain dicts: chat templates read arbitrary message keys.
"""

from __future__ import annotations

from typing import Any

import msgspec


class StreamOptions(msgspec.Struct, forbid_unknown_fields=True):
    include_usage: bool = False


class SamplingFields(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The fields completions and chat completions share."""

    model: str
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None              # accepted and ignored, as OpenAI clients send it
    # extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    min_tokens: int = 0


class CompletionRequest(SamplingFields, kw_only=True):
    """``POST /v1/completions``. ``prompt``: a string, token ids, or a list of either."""

    prompt: str | list[Any]
    max_tokens: int | None = None        # None: 16, OpenAI's default
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class ChatCompletionRequest(SamplingFields, kw_only=True):
    """``POST /v1/chat/completions``; messages are rendered with the model's chat template."""

    messages: list[dict[str, Any]]
    max_tokens: int | None = None        # None: up to the model's length
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    # extras
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
