"""Reads a SchedulerOutput once: a validated plan of per-request records, then applies it.

``read_step`` walks the step against the runner's request states (by id, and
by slot: ``slots[i]`` is the state of the request in slot ``i``, or None) and
limits and returns a ``StepPlan`` (records in batch-row order: new requests first,
then cached ones). Every check runs there, before anything changes, so a bad
step raises ``InvalidRequestError`` and leaves every request exactly as it
was; the runner keeps serving the others. ``apply_step`` walks the same
records to update the states; nothing else interprets the diff.

Cost: one pass over the step's slots (a list index each; no strings travel
for cached requests). Cached requests' columns are checked whole (lengths,
sums, one min/max per column); a new request's id and prompt are checked
value by value at its first step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping, MutableSequence, Sequence
from typing import NamedTuple

import torch

from actorexec.actors.model_runner.request_state import CachedRequestState
from actorexec.actors.model_runner.step_plan import RequestStep, RunnerLimits, StepPlan
from actorexec.protocol.columns import int32s, ragged_mismatch
from actorexec.protocol.errors import InvalidRequestError
from actorexec.protocol.sampling import SamplingParams
from actorexec.protocol.scheduler_output import CachedRequestData, NewRequestData, SchedulerOutput

MAX_REQ_ID_LEN = 256
VOCAB, CACHE = "the vocabulary", "the KV cache"  # the ranges ids are checked against


def _fail(message: str) -> InvalidRequestError:
    return InvalidRequestError(message)


def _check_int(what: str, value: object, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _fail(f"{what} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _check_req_id(req_id: object) -> str:
    if (type(req_id) is not str or not 0 < len(req_id) <= MAX_REQ_ID_LEN
            or not req_id.isprintable()):
        raise _fail(f"request id {str(req_id)[:64]!r} must be a printable string of 1 to "
                    f"{MAX_REQ_ID_LEN} characters")
    return req_id


def _check_ids(req_id: str, what: str, ids: object, limit: int, where: str) -> list[int]:
    """``ids`` must be a list of ints in ``[0, limit)``; ``where`` names that range."""
    if type(ids) is not list:
        raise _fail(f"request {req_id!r}: {what} must be a list, got {type(ids).__name__}")
    for t in ids:  # a loop, not a comprehension: no allocation for the usual 0 or 1 ids
        if type(t) is not int or not 0 <= t < limit:
            bad = [t for t in ids if type(t) is not int or not 0 <= t < limit]
            raise _fail(f"request {req_id!r}: {what} {bad[:4]} outside {where} [0, {limit})")
    return ids


def _record(req_id: str, new: NewRequestData | None, tokens: list[int], blocks: list[int],
            start: int, num_scheduled: int, num_tokens: int, num_blocks: int,
            limits: RunnerLimits, num_device: int = 0) -> RequestStep:
    """The record, once the tokens it runs are known to exist and fit its blocks."""
    end = start + num_scheduled
    if end > num_tokens:
        raise _fail(f"request {req_id!r}: tokens [{start}, {end}) scheduled but it has only "
                    f"{num_tokens} tokens")
    if end > num_blocks * limits.block_size:
        raise _fail(f"request {req_id!r}: {end} tokens need {-(-end // limits.block_size)} "
                    f"blocks, it has {num_blocks}")
    if num_blocks > limits.max_blocks_per_req:
        raise _fail(f"request {req_id!r}: {num_blocks} blocks exceed what max_model_len "
                    f"{limits.max_model_len} needs")
    if num_tokens > limits.max_model_len:  # its device row holds max_model_len tokens
        raise _fail(f"request {req_id!r}: {num_tokens} tokens exceed max_model_len "
                    f"{limits.max_model_len}")
    return RequestStep(req_id, new, tokens, blocks, start, num_scheduled, num_tokens, num_device)


Slots = Sequence[CachedRequestState | None]  # slot -> the request it holds, or None


def _read_new(new: object, states: Mapping[str, CachedRequestState], slots: Slots,
              finished: set[str], limits: RunnerLimits,
              count: Callable[[int, object, str], int]) -> RequestStep:
    if not isinstance(new, NewRequestData):
        raise _fail(f"scheduled_new_reqs holds a {type(new).__name__}, not NewRequestData")
    req_id = _check_req_id(new.req_id)
    if req_id in states and req_id not in finished:
        raise _fail(f"request {req_id!r} is added but already exists")
    slot = _check_int(f"request {req_id!r}: slot", new.slot, 0, len(slots) - 1)
    holder = slots[slot]
    if holder is not None and holder.req_id not in finished:
        raise _fail(f"request {req_id!r} is added in slot {slot}, which holds request "
                    f"{holder.req_id!r}")
    num_scheduled = count(slot, new.num_scheduled_tokens, req_id)
    vocab = limits.vocab_size
    prompt = _check_ids(req_id, "prompt token ids", new.prompt_token_ids, vocab, VOCAB)
    if not prompt:
        raise _fail(f"request {req_id!r} has an empty prompt")
    output = _check_ids(req_id, "output token ids", new.output_token_ids, vocab, VOCAB)
    blocks = _check_ids(req_id, "block ids", new.block_ids, limits.num_blocks, CACHE)
    params = new.sampling_params
    if not isinstance(params, SamplingParams):
        raise _fail(f"request {req_id!r}: sampling_params is a {type(params).__name__}")
    _check_ids(req_id, "stop_token_ids", list(params.stop_token_ids), vocab, VOCAB)
    if new.num_computed_tokens != 0:
        raise _fail(f"request {req_id!r} is new but num_computed_tokens="
                    f"{new.num_computed_tokens!r}: a new request has no K/V yet (no prefix "
                    "cache), so it starts at 0")
    return _record(req_id, new, prompt + output if output else prompt, blocks, 0,
                   num_scheduled, len(prompt) + len(output), len(blocks), limits)


def _check_device_tokens(req_id: str, num_device: int, gains_host_tokens: bool,
                         state: CachedRequestState, limits: RunnerLimits) -> int:
    """A request may take in only the one token its latest step sampled, and only as the
    sole token it gains (host values before it would leave it at the wrong position)."""
    if num_device == 0:
        return 0
    if num_device != 1:
        raise _fail(f"request {req_id!r}: num_device_tokens={num_device!r}; a step adds at "
                    "most the one token the request's previous step sampled")
    if not limits.accepts_device_tokens:
        raise _fail(f"request {req_id!r}: a device token needs async scheduling "
                    "(SchedulerConfig.async_scheduling), which these runners have off")
    if gains_host_tokens:
        raise _fail(f"request {req_id!r} gains host tokens and a device token in one step")
    if not state.has_device_sample:
        raise _fail(f"request {req_id!r}: a device token is added but its latest step "
                    "sampled none, or a later step already took it in")
    return 1


class _CachedColumns(NamedTuple):
    """A CachedRequestData's columns as int32 views, checked to line up."""

    slots: memoryview
    starts: memoryview
    counts: memoryview
    num_tokens: memoryview
    tokens: memoryview
    num_blocks: memoryview
    blocks: memoryview
    device: memoryview | list[int]


def _columns(c: CachedRequestData, num_slots: int) -> _CachedColumns:
    try:
        cols = [int32s(col) for col in (c.slots, c.num_computed_tokens, c.num_scheduled_tokens,
                                         c.num_new_tokens, c.new_token_ids, c.num_new_blocks,
                                         c.new_block_ids, c.num_device_tokens)]
    except (TypeError, ValueError) as exc:  # not bytes, or not whole int32s
        raise _fail(f"CachedRequestData columns must be int32 bytes: {exc}") from None
    slots, starts, counts, num_tokens, tokens, num_blocks, blocks, device = cols
    n = len(slots)
    if any(len(x) != n for x in (starts, counts, num_tokens, num_blocks)) or (
            device and len(device) != n):
        raise _fail("CachedRequestData columns differ in length from its slots")
    if slots and (min(slots) < 0 or max(slots) >= num_slots):  # before any list index
        raise _fail(f"CachedRequestData names slots outside [0, {num_slots}): "
                    f"{[s for s in slots if not 0 <= s < num_slots][:4]}")
    for what, per_req, flat in (("tokens", num_tokens, tokens), ("blocks", num_blocks, blocks)):
        if (why := ragged_mismatch(per_req, flat)) is not None:
            raise _fail(f"CachedRequestData: the per-request new {what} counts do not add up "
                        f"to the new {what} sent: {why}")
    return _CachedColumns(slots, starts, counts, num_tokens, tokens, num_blocks, blocks,
                          device or [0] * n)


def _name(slots: Slots, slot: int) -> str:
    state = slots[slot]
    return state.req_id if state is not None else f"<empty slot {slot}>"


def _check_range(what: str, flat: memoryview, per_req: memoryview, slot_col: memoryview,
                 slots: Slots, limit: int, where: str) -> None:
    """Every value of the flat column in ``[0, limit)``: two C-speed passes; the request
    named only on failure."""
    if flat and (min(flat) < 0 or max(flat) >= limit):
        end = 0
        for slot, n in zip(slot_col, per_req, strict=True):
            end += n
            _check_ids(_name(slots, slot), what, flat[end - n:end].tolist(), limit, where)


def _read_cached(c: CachedRequestData, slots: Slots, finished: set[str], limits: RunnerLimits,
                 count: Callable[[int, object], int]) -> Iterator[RequestStep]:
    cols = _columns(c, len(slots))
    _check_range("new token ids", cols.tokens, cols.num_tokens, cols.slots, slots,
                 limits.vocab_size, VOCAB)
    _check_range("block ids", cols.blocks, cols.num_blocks, cols.slots, slots,
                 limits.num_blocks, CACHE)
    token_end = block_end = 0
    for slot, start, scheduled, n_tokens, n_blocks, device in zip(
            cols.slots, cols.starts, cols.counts, cols.num_tokens, cols.num_blocks,
            cols.device, strict=True):
        num_scheduled = count(slot, scheduled)
        state = slots[slot]
        if state is None or state.req_id in finished:
            raise _fail(f"slot {slot} holds no request (never added, or finished)")
        req_id = state.req_id
        num_device = _check_device_tokens(req_id, device, n_tokens > 0, state, limits)
        expected = state.next_start
        if start != expected:
            raise _fail(f"request {req_id!r}: num_computed_tokens={start!r} but its steps so "
                        f"far ran tokens [0, {expected}): a step must start where the last "
                        "ended")
        # Decode steps gain 0 or 1 token and usually no block: no slice for those.
        tokens = cols.tokens[token_end:token_end + n_tokens].tolist() if n_tokens else []
        blocks = cols.blocks[block_end:block_end + n_blocks].tolist() if n_blocks else []
        token_end += n_tokens
        block_end += n_blocks
        yield _record(req_id, None, tokens, blocks, start, num_scheduled,
                      state.num_tokens + n_tokens + num_device,
                      len(state.block_ids) + n_blocks, limits, num_device)


def _finished(so: SchedulerOutput, slots: Slots) -> list[str]:
    """The ids of the requests in ``finished_slots`` (an empty slot is nothing to drop)."""
    if type(so.finished_slots) is not list:
        raise _fail("finished_slots must be a list of slots")
    for slot in so.finished_slots:
        _check_int("a finished slot", slot, 0, len(slots) - 1)
    return [state.req_id for s in so.finished_slots if (state := slots[s]) is not None]


def read_step(so: SchedulerOutput, states: Mapping[str, CachedRequestState], slots: Slots,
              limits: RunnerLimits) -> StepPlan:
    """Validates ``so`` against ``states``, ``slots`` and ``limits``; raises
    InvalidRequestError describing the first inconsistency found. Changes nothing."""
    if not isinstance(so, SchedulerOutput):
        raise _fail(f"execute_model takes a SchedulerOutput, got {type(so).__name__}")
    step_id = _check_int("step_id", so.step_id, -(2**63), 2**63 - 1)
    finished_ids = _finished(so, slots)
    finished = set(finished_ids)
    c = so.scheduled_cached_reqs
    if not isinstance(c, CachedRequestData):
        raise _fail(f"scheduled_cached_reqs is a {type(c).__name__}, not CachedRequestData")
    seen: set[int] = set()

    def count(slot: int, num: object, name: str | None = None) -> int:
        """The scheduled token count of the request in ``slot`` (``name``: a new one's id;
        a cached one's is looked up only for an error); each slot is in a step once."""
        if slot in seen:
            raise _fail(f"slot {slot} ({name or _name(slots, slot)!r}) appears twice in one "
                        "step")
        seen.add(slot)
        if type(num) is not int or num < 1:
            raise _fail(f"slot {slot} ({name or _name(slots, slot)!r}) is in the step with no "
                        f"tokens (num_scheduled_tokens={num!r})")
        return num

    records = [_read_new(new, states, slots, finished, limits, count)
               for new in so.scheduled_new_reqs]
    if len({r.req_id for r in records}) != len(records):
        raise _fail("a request is added twice in one step")
    records += _read_cached(c, slots, finished, limits, count)
    _check_blocks_unshared(records)
    total = sum(r.num_scheduled_tokens for r in records)
    if total > limits.max_num_tokens or len(records) > limits.max_num_reqs:
        raise _fail(f"step of {total} tokens / {len(records)} requests exceeds the runner's "
                    f"{limits.max_num_tokens} tokens / {limits.max_num_reqs} requests")
    return StepPlan(step_id, records, finished_ids)


def _check_blocks_unshared(records: list[RequestStep]) -> None:
    """No block is handed out twice in one step (two owners would overwrite each other's K/V)."""
    gained = [b for r in records for b in r.new_block_ids]
    if len(set(gained)) != len(gained):
        seen: set[int] = set()
        twice: set[int] = set()
        for b in gained:
            (twice if b in seen else seen).add(b)
        raise _fail(f"block ids {sorted(twice)[:4]} are given out twice in one step")


def apply_step(plan: StepPlan, states: MutableMapping[str, CachedRequestState],
               slots: MutableSequence[CachedRequestState | None], device: torch.device) -> None:
    """Applies a plan ``read_step`` returned: drops finished requests (and frees their
    slots), adds new ones, extends cached ones. New states are built first, so nothing
    changes if one fails."""
    fresh = {r.req_id: CachedRequestState.from_new(r.new, device)
             for r in plan.requests if r.new is not None}
    for req_id in plan.finished_req_ids:
        if (gone := states.pop(req_id, None)) is not None:
            slots[gone.slot] = None
    for rec in plan.requests:
        if rec.new is not None:
            state = states[rec.req_id] = fresh[rec.req_id]
            slots[state.slot] = state
        else:
            state = states[rec.req_id]
            state.output_token_ids.extend(rec.new_token_ids)
            state.num_device_tokens += rec.num_device_tokens
            state.block_ids.extend(rec.new_block_ids)
            state.num_computed_tokens = rec.num_computed_tokens
        state.num_scheduled_tokens = rec.num_scheduled_tokens
        # What a later step may take in as a device token: this step's sample, if any.
        state.has_device_sample = rec.samples
