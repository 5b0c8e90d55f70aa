"""The per-step input: what the scheduler decided, as a diff against last step.

Diff semantics (as in vLLM v1): a request appears in full once, as a
``NewRequestData``, the step it is first scheduled. In later steps it appears
in ``CachedRequestData`` with only what changed: the tokens it gained since
its last scheduled step (``new_token_ids``: tokens sampled by the last
pipeline stage, sent to every rank so all ranks hold the same token list), the
blocks appended to its block table, and ``num_computed_tokens``. A request
resumed after preemption brings its whole block table in ``new_block_ids``
(replacing the old one) and restarts from ``num_computed_tokens``.
``finished_req_ids`` lists requests whose state every rank drops.

Tokens a request runs this step are ``all_tokens[num_computed : num_computed
+ num_scheduled_tokens[req_id]]``; the last of those produces the sampled
token once the request has run its whole known sequence.
"""

from __future__ import annotations

import msgspec

from .sampling import SamplingParams


class NewRequestData(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """A request scheduled for the first time: everything the runner must keep."""

    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int = 0
    # Output tokens the request already has (a request re-added after being dropped).
    output_token_ids: list[int] = []


class CachedRequestData(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """Diffs for requests the runner already holds; parallel lists, one entry per request."""

    req_ids: list[str] = []
    resumed_from_preemption: list[bool] = []
    new_token_ids: list[list[int]] = []
    new_block_ids: list[list[int]] = []
    num_computed_tokens: list[int] = []

    @property
    def num_reqs(self) -> int:
        return len(self.req_ids)

    def add(self, req_id: str, new_token_ids: list[int], new_block_ids: list[int],
            num_computed_tokens: int, resumed_from_preemption: bool = False) -> None:
        """Appends one request's diff to every parallel list at once, so they stay aligned."""
        self.req_ids.append(req_id)
        self.resumed_from_preemption.append(resumed_from_preemption)
        self.new_token_ids.append(new_token_ids)
        self.new_block_ids.append(new_block_ids)
        self.num_computed_tokens.append(num_computed_tokens)


class SchedulerOutput(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """One step: which requests run how many tokens, and the state diff.

    ``step_id`` increases by one per step from the engine; workers process
    steps in submission order.
    """

    step_id: int = 0
    scheduled_new_reqs: list[NewRequestData] = []
    scheduled_cached_reqs: CachedRequestData = msgspec.field(default_factory=CachedRequestData)
    num_scheduled_tokens: dict[str, int] = {}
    total_num_scheduled_tokens: int = 0
    finished_req_ids: list[str] = []

    @classmethod
    def empty(cls, step_id: int = 0, finished_req_ids: list[str] | None = None) -> SchedulerOutput:
        return cls(step_id=step_id, finished_req_ids=list(finished_req_ids or []))
