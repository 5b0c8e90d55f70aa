"""The per-step input: what the scheduler decided, as a diff against last step.

Diff semantics (as in vLLM v1): a request appears in full once, as a
``NewRequestData``, the step it is first scheduled. In later steps it appears
in ``CachedRequestData`` with only what changed: the tokens it gained since
its last scheduled step (``new_token_ids``: tokens sampled by the last
pipeline stage, sent to every rank so all ranks hold the same token list), the
blocks appended to its block table, and ``num_computed_tokens``, which must be
exactly where its previous step ended. With async scheduling a request may
instead gain the token its previous step sampled *without the host knowing
it* (``num_device_tokens``: 1): the runner wrote that token into the
request's row on the device right after sampling, so the step reads it there.
``finished_req_ids`` lists requests whose state every rank drops; a preempted
request is dropped that way and later sent again as a ``NewRequestData`` that
starts at token 0 (recompute).

Tokens a request runs this step are ``all_tokens[num_computed : num_computed
+ num_scheduled_tokens[req_id]]``; the last of those produces the sampled
token once the request has run its whole known sequence.

Build a step with ``SchedulerOutput.add_new`` / ``add_cached``: each puts the
request's diff and its token count in at once, so the two cannot disagree.
The runner checks every field against its state and limits before anything
changes (``actors/model_runner/step_reader.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from .sampling import SamplingParams


class NewRequestData(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False,
                     forbid_unknown_fields=True):
    """A request scheduled for the first time: everything the runner must keep.

    ``num_computed_tokens`` is 0: there is no prefix cache, so a new request
    (also one re-sent after preemption) computes every token from the start.
    """

    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int = 0
    # Output tokens the request already has (a request re-sent after preemption).
    output_token_ids: list[int] = []


class CachedRequestData(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False,
                        forbid_unknown_fields=True):
    """Diffs for requests the runner already holds; parallel lists, one entry per request.

    ``num_device_tokens[i]`` (0 or 1) counts tokens request ``i`` gains whose
    value only the runners hold: the token its previous step sampled, which the
    output rank wrote into its device row (and sent to the other ranks that
    need it). Such a step carries no ``new_token_ids`` for that request. An
    empty list means 0 for every request (steps built without async scheduling).
    """

    req_ids: list[str] = []
    new_token_ids: list[list[int]] = []
    new_block_ids: list[list[int]] = []
    num_computed_tokens: list[int] = []
    num_device_tokens: list[int] = []

    @property
    def num_reqs(self) -> int:
        return len(self.req_ids)

    def add(self, req_id: str, new_token_ids: list[int], new_block_ids: list[int],
            num_computed_tokens: int, num_device_tokens: int = 0) -> None:
        """Appends one request's diff to every parallel list at once, so they stay aligned."""
        if num_device_tokens or self.num_device_tokens:  # the list exists once one is nonzero
            self.num_device_tokens.extend([0] * (len(self.req_ids) - len(self.num_device_tokens)))
            self.num_device_tokens.append(num_device_tokens)
        self.req_ids.append(req_id)
        self.new_token_ids.append(new_token_ids)
        self.new_block_ids.append(new_block_ids)
        self.num_computed_tokens.append(num_computed_tokens)


class SchedulerOutput(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False,
                      forbid_unknown_fields=True):
    """One step: which requests run how many tokens, and the state diff.

    ``step_id`` increases by one per step from the engine; workers process
    steps in submission order. ``total_num_scheduled_tokens`` is derived from
    ``num_scheduled_tokens`` (never sent, so it cannot disagree).
    """

    step_id: int = 0
    scheduled_new_reqs: list[NewRequestData] = []
    scheduled_cached_reqs: CachedRequestData = msgspec.field(default_factory=CachedRequestData)
    num_scheduled_tokens: dict[str, int] = {}
    finished_req_ids: list[str] = []

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())

    def add_new(self, request: NewRequestData, num_scheduled_tokens: int) -> None:
        """Schedules a request the runner does not hold yet: all of it, and its token count."""
        self.scheduled_new_reqs.append(request)
        self.num_scheduled_tokens[request.req_id] = num_scheduled_tokens

    def add_cached(self, req_id: str, *, num_computed_tokens: int, num_scheduled_tokens: int,
                   new_token_ids: Sequence[int] = (), new_block_ids: Sequence[int] = (),
                   num_device_tokens: int = 0) -> None:
        """Schedules a request the runner holds: what it gained (host-known tokens, or its
        last sampled token still on the device), where it starts, how many run."""
        self.scheduled_cached_reqs.add(req_id, list(new_token_ids), list(new_block_ids),
                                       num_computed_tokens, num_device_tokens)
        self.num_scheduled_tokens[req_id] = num_scheduled_tokens
