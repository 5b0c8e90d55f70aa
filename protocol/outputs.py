"""The per-step result of the output rank (last pipeline stage, TP rank 0)."""

from __future__ import annotations

import msgspec


class TokenLogprobs(msgspec.Struct, array_like=True, gc=False):
    """Logprobs of one sampled token: position 0 is the sampled token, then the top-n."""

    token_ids: list[int]
    logprobs: list[float]
    sampled_rank: int  # 1-based rank of the sampled token under the model's distribution


class ModelRunnerOutput(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """Token ids sampled this step, one list per scheduled request (in ``req_ids`` order).

    A request still in chunked prefill gets an empty list. ``logprobs`` holds
    an entry for each request that asked for them and sampled a token.
    """

    step_id: int = 0
    req_ids: list[str] = []
    sampled_token_ids: list[list[int]] = []
    logprobs: dict[str, list[TokenLogprobs]] = {}

    def tokens_by_request(self) -> dict[str, list[int]]:
        return dict(zip(self.req_ids, self.sampled_token_ids, strict=True))


class StepTiming(msgspec.Struct, array_like=True, gc=False):
    """When one rank ran one step: ``time.monotonic()`` seconds (system-wide on Linux,
    so ranks on one host compare). Used to show that pipeline stages overlap."""

    step_id: int
    rank: int
    start: float
    end: float
