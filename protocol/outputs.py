"""The per-step result of the output rank (last pipeline stage, TP rank 0).

Structural checks only (columns that must line up, ids that must be ids): a
reply that fails them decodes as a ``ProtocolError`` on the caller. Values
the model computed (logprobs, even NaN) are passed on as they are.
"""

from __future__ import annotations

import math
from itertools import chain

import msgspec

from .checks import INT32_MAX
from .columns import int32s, num_values, pack_int32, ragged_mismatch, split_ragged


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
    """Token ids sampled this step, per scheduled request in the step's batch order
    (``SchedulerOutput.slots``: no ids travel back), as int32 columns
    (``columns.py``): ``num_sampled[i]`` of the flat ``sampled_token_ids`` are
    request ``i``'s, after request ``i - 1``'s. An empty ``num_sampled`` means
    one token per request (every decode step), so that case carries and checks
    no counts. Whoever sent the step knows its requests; ``num_reqs`` must
    match them (the engine checks).

    A request still in chunked prefill samples 0 tokens. ``logprobs`` maps the
    batch position of each request that asked for them and sampled a token to
    its entries. Build one from Python lists with ``from_lists``; read it with
    ``sampled_lists``.
    """

    step_id: int = 0
    num_sampled: bytes = b""
    sampled_token_ids: bytes = b""
    logprobs: dict[int, list[TokenLogprobs]] = {}

    def __post_init__(self) -> None:
        # Cheap (no per-token work in the one-token-each case): a reply that does not line
        # up fails here, typed, instead of inside the engine's bookkeeping.
        if type(self.num_sampled) is not bytes or type(self.sampled_token_ids) is not bytes:
            raise ValueError("ModelRunnerOutput.num_sampled and sampled_token_ids are int32 "
                             "columns (bytes); build an output from lists with "
                             "ModelRunnerOutput.from_lists")
        tokens = int32s(self.sampled_token_ids)
        if self.num_sampled:
            if (why := ragged_mismatch(int32s(self.num_sampled), tokens)) is not None:
                raise ValueError(f"ModelRunnerOutput's counts do not add up to its sampled "
                                 f"tokens: {why}")
        if self.logprobs and not (0 <= min(self.logprobs) and max(self.logprobs)
                                  < self.num_reqs):
            raise ValueError(f"ModelRunnerOutput.logprobs names batch positions outside "
                             f"[0, {self.num_reqs})")

    @property
    def num_reqs(self) -> int:
        """How many requests the output is for (one token each when ``num_sampled`` is empty)."""
        return num_values(self.num_sampled or self.sampled_token_ids)

    @classmethod
    def from_lists(cls, step_id: int, sampled_token_ids: list[list[int]],
                   logprobs: dict[int, list[TokenLogprobs]] | None = None) -> ModelRunnerOutput:
        """The output with the step's ``i``-th request's tokens ``sampled_token_ids[i]``."""
        counts = list(map(len, sampled_token_ids))
        one_each = counts.count(1) == len(counts)
        return cls(step_id=step_id, num_sampled=b"" if one_each else pack_int32(counts),
                   sampled_token_ids=pack_int32(list(chain.from_iterable(sampled_token_ids))),
                   logprobs=logprobs or {})

    def sampled_lists(self) -> list[list[int]]:
        """Each request's sampled token ids, in the step's batch order."""
        tokens = int32s(self.sampled_token_ids)
        if not self.num_sampled:
            return [[t] for t in tokens.tolist()]
        return split_ragged(int32s(self.num_sampled), tokens)


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
