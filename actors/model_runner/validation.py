"""Checks a SchedulerOutput against the runner's state before anything changes.

Every check runs on a read-only view (the state as it *would* be after the
diff), so a bad step raises ``InvalidRequestError`` and leaves every request
exactly as it was: the runner keeps serving the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from actorexec.actors.model_runner.request_state import CachedRequestState
from actorexec.protocol.errors import InvalidRequestError
from actorexec.protocol.scheduler_output import SchedulerOutput


@dataclass(frozen=True)
class RunnerLimits:
    """What the runner's buffers and cache can hold."""

    vocab_size: int
    num_blocks: int
    block_size: int
    max_model_len: int
    max_num_reqs: int
    max_num_tokens: int


def _check_tokens(req_id: str, tokens: Iterable[int], vocab: int) -> None:
    bad = [t for t in tokens if not 0 <= t < vocab]
    if bad:
        raise InvalidRequestError(f"request {req_id!r}: token ids {bad[:4]} outside the "
                                  f"vocabulary [0, {vocab})")


def _check_blocks(req_id: str, blocks: Iterable[int], num_blocks: int) -> None:
    bad = [b for b in blocks if not 0 <= b < num_blocks]
    if bad:
        raise InvalidRequestError(f"request {req_id!r}: block ids {bad[:4]} outside the "
                                  f"KV cache [0, {num_blocks})")


def validate_scheduler_output(so: SchedulerOutput, states: Mapping[str, CachedRequestState],
                              limits: RunnerLimits) -> None:
    """Raises InvalidRequestError describing the first inconsistency found."""
    finished = set(so.finished_req_ids)
    live = {r for r in states if r not in finished}
    cached = so.scheduled_cached_reqs
    n = cached.num_reqs
    lists = (cached.resumed_from_preemption, cached.new_token_ids, cached.new_block_ids,
             cached.num_computed_tokens)
    if any(len(x) != n for x in lists):
        raise InvalidRequestError("CachedRequestData lists differ in length")
    # After-diff view: req_id -> (num_tokens, num_blocks, num_computed).
    view: dict[str, tuple[int, int, int]] = {}
    for new in so.scheduled_new_reqs:
        if new.req_id in live or new.req_id in view:
            raise InvalidRequestError(f"request {new.req_id!r} is added but already exists")
        _check_tokens(new.req_id, new.prompt_token_ids, limits.vocab_size)
        _check_tokens(new.req_id, new.output_token_ids, limits.vocab_size)
        _check_blocks(new.req_id, new.block_ids, limits.num_blocks)
        if not new.prompt_token_ids:
            raise InvalidRequestError(f"request {new.req_id!r} has an empty prompt")
        view[new.req_id] = (len(new.prompt_token_ids) + len(new.output_token_ids),
                            len(new.block_ids), new.num_computed_tokens)
    for i, req_id in enumerate(cached.req_ids):
        if req_id not in live:
            raise InvalidRequestError(f"unknown request {req_id!r} (never added or finished)")
        if req_id in view:
            raise InvalidRequestError(f"request {req_id!r} appears twice in one step")
        state = states[req_id]
        _check_tokens(req_id, cached.new_token_ids[i], limits.vocab_size)
        _check_blocks(req_id, cached.new_block_ids[i], limits.num_blocks)
        blocks = len(cached.new_block_ids[i]) + (
            0 if cached.resumed_from_preemption[i] else len(state.block_ids))
        view[req_id] = (state.num_tokens + len(cached.new_token_ids[i]), blocks,
                        cached.num_computed_tokens[i])
    unknown = set(so.num_scheduled_tokens) - set(view)
    if unknown:
        raise InvalidRequestError(f"tokens scheduled for requests {sorted(unknown)} that are "
                                  "neither new nor cached in this step")
    total = 0
    for req_id, (num_tokens, num_blocks, computed) in view.items():
        sched = so.num_scheduled_tokens.get(req_id, 0)
        if sched < 1:
            raise InvalidRequestError(f"request {req_id!r} is in the step with no tokens")
        end = computed + sched
        if computed < 0 or end > num_tokens:
            raise InvalidRequestError(
                f"request {req_id!r}: tokens [{computed}, {end}) scheduled but it has only "
                f"{num_tokens} tokens")
        if end > num_blocks * limits.block_size:
            raise InvalidRequestError(
                f"request {req_id!r}: {end} tokens need {-(-end // limits.block_size)} blocks, "
                f"it has {num_blocks}")
        if num_blocks > -(-limits.max_model_len // limits.block_size):
            raise InvalidRequestError(f"request {req_id!r}: {num_blocks} blocks exceed what "
                                      f"max_model_len {limits.max_model_len} needs")
        if end > limits.max_model_len:
            raise InvalidRequestError(f"request {req_id!r}: {end} tokens exceed max_model_len "
                                      f"{limits.max_model_len}")
        total += sched
    if total != so.total_num_scheduled_tokens:
        raise InvalidRequestError(f"total_num_scheduled_tokens={so.total_num_scheduled_tokens} "
                                  f"but the requests' counts sum to {total}")
    if total > limits.max_num_tokens or len(view) > limits.max_num_reqs:
        raise InvalidRequestError(
            f"step of {total} tokens / {len(view)} requests exceeds the runner's "
            f"{limits.max_num_tokens} tokens / {limits.max_num_reqs} requests")
