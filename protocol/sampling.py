"""Per-request sampling parameters."""

from __future__ import annotations

import msgspec

from .errors import ConfigError

MAX_LOGPROBS = 20


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """How to pick each next token of one request.

    ``temperature == 0`` is greedy. ``top_k=None`` / ``top_p=1`` / ``min_p=0``
    disable those filters. ``seed`` gives the request its own generator, so
    its tokens do not depend on what else is in the batch. ``logprobs=n``
    returns the sampled token's logprob and the top-n alternatives.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int = 16
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"SamplingParams.top_k must be None or >= 1, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ConfigError(f"SamplingParams.min_p must be in [0, 1], got {self.min_p}")
        if self.max_tokens < 1:
            raise ConfigError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")
        if self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            raise ConfigError("SamplingParams.min_tokens must be in [0, max_tokens], "
                              f"got {self.min_tokens}")
        if self.repetition_penalty <= 0:
            raise ConfigError("SamplingParams.repetition_penalty must be > 0, "
                              f"got {self.repetition_penalty}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ConfigError(f"SamplingParams.logprobs must be in [0, {MAX_LOGPROBS}], "
                              f"got {self.logprobs}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
