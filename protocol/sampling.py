"""Per-request sampling parameters."""

from __future__ import annotations

import msgspec

from .checks import INT32_MAX, INT64_MAX, INT64_MIN, check_bool, check_float, check_int
from .errors import ConfigError

MAX_LOGPROBS = 20
MAX_PENALTY = 2.0  # presence / frequency penalty bound, as in vLLM and the OpenAI API


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True,
                     forbid_unknown_fields=True):
    """How to pick each next token of one request.

    ``temperature == 0`` is greedy. ``top_k`` of ``None``, ``0`` or ``-1``
    considers every token (0 and -1 are vLLM's spellings; both become
    ``None`` here), as do ``top_p=1`` and ``min_p=0``. ``seed`` gives the
    request its own generator, so its tokens do not depend on what else is in
    the batch. ``logprobs=n`` returns the sampled token's logprob and the
    top-n alternatives. ``min_tokens``: eos and ``stop_token_ids`` cannot be
    sampled before that many outputs exist.

    Every field is range-checked at construction and on decode (a
    ``ConfigError``, which the codec reports as a ``ProtocolError``), so the
    sampler never sees a value it cannot hold: finite floats, counts and
    token ids within int32, a seed within int64.
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
        own = "SamplingParams"
        check_float(own, "temperature", self.temperature, 0.0)
        if self.top_k is not None:
            check_int(own, "top_k", self.top_k, -1)
            if self.top_k <= 0:
                msgspec.structs.force_setattr(self, "top_k", None)
        check_float(own, "top_p", self.top_p, 0.0, 1.0, low_open=True)
        check_float(own, "min_p", self.min_p, 0.0, 1.0)
        if self.seed is not None:
            check_int(own, "seed", self.seed, INT64_MIN, INT64_MAX)
        check_int(own, "max_tokens", self.max_tokens, 1)
        check_int(own, "min_tokens", self.min_tokens, 0, self.max_tokens)
        if not isinstance(self.stop_token_ids, (tuple, list)):
            raise ConfigError(f"{own}.stop_token_ids must be a sequence of token ids, "
                              f"got {self.stop_token_ids!r}")
        for token in self.stop_token_ids:
            check_int(own, "stop_token_ids[...]", token, 0, INT32_MAX)
        if not isinstance(self.stop_token_ids, tuple):
            msgspec.structs.force_setattr(self, "stop_token_ids", tuple(self.stop_token_ids))
        check_bool(own, "ignore_eos", self.ignore_eos)
        check_float(own, "repetition_penalty", self.repetition_penalty, 0.0, low_open=True)
        check_float(own, "presence_penalty", self.presence_penalty, -MAX_PENALTY, MAX_PENALTY)
        check_float(own, "frequency_penalty", self.frequency_penalty, -MAX_PENALTY, MAX_PENALTY)
        if self.logprobs is not None:
            check_int(own, "logprobs", self.logprobs, 0, MAX_LOGPROBS)
