"""The per-step result of the output rank (last pipeline stage, TP rank 0).

Structural checks only (lists that must line up, ids that must be ids): a
reply that fails them decodes as a ``ProtocolError`` on the caller. Values
the model computed (logprobs, even NaN) are passed on as they are.
"""

from __future__ import annotations

import math

import msgspec

from .checks import INT32_MAX


class TokenLogprobs(msgspec.Struct, array_like=True, gc=False, forbid_unknown_fields=True):
    """Logprobs of one sampled token: position 0 is the sampled token, then the top-n."""

    token_ids: list[int]
    logprobs: list[float]
    sampled_rank: int  # 1-based rank of the sampled token under the model's distribution

    def __post_init__(self) -> None:
        if not 0 < len(self.token_ids) == len(self.logprobs):
            raise ValueError("TokenLogprobs needs one logprob per token id, the sampled one first; "
                             f"got {len(self.token_ids)} ids, {len(self.logprobs)} logprobs")
        if any(type(t) is not int or not 0 <= t <= INT32_MAX for t in self.token_ids):
            raise ValueError(f"TokenLogprobs.token_ids must be token ids, got {self.token_ids}")
        if type(self.sampled_rank) is not int or self.sampled_rank < 1:
            raise ValueError(f"TokenLogprobs.sampled_rank must be >= 1, got {self.sampled_rank}")


class ModelRunnerOutput(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False,
                        forbid_unknown_fields=True):
    """Token ids sampled this step, one list per scheduled request (in ``req_ids`` order).

    A request still in chunked prefill gets an empty list. ``logprobs`` holds
    an entry for each request that asked for them and sampled a token.
    """

    step_id: int = 0
    req_ids: list[str] = []
    sampled_token_ids: list[list[int]] = []
    logprobs: dict[str, list[TokenLogprobs]] = {}

    def __post_init__(self) -> None:
        # Cheap (no per-token work): a reply that does not line up fails here, typed,
        # instead of inside the engine's bookkeeping.
        if len(self.req_ids) != len(self.sampled_token_ids):
            raise ValueError(f"ModelRunnerOutput has {len(self.req_ids)} req_ids but "
                              f"{len(self.sampled_token_ids)} sampled token lists")
        if self.logprobs and not self.logprobs.keys() <= set(self.req_ids):
            raise ValueError("ModelRunnerOutput.logprobs names requests not in req_ids")

    def tokens_by_request(self) -> dict[str, list[int]]:
        return dict(zip(self.req_ids, self.sampled_token_ids, strict=True))


class StepTiming(msgspec.Struct, array_like=True, gc=False, forbid_unknown_fields=True):
    """When one rank ran one step: ``time.monotonic()`` seconds (system-wide on Linux,
    so ranks on one host compare). Used to show that pipeline stages overlap."""

    step_id: int
    rank: int
    start: float
    end: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and math.isfinite(self.end)
                and self.start <= self.end and self.rank >= 0):
            raise ValueError(f"StepTiming needs rank >= 0 and finite start <= end, got {self}")
