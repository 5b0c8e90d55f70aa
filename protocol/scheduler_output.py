"""The per-step input: what the scheduler decided, as a diff against last step.

Diff semantics (as in vLLM v1): a request appears in full once, as a
``NewRequestData``, the step it is first scheduled. In later steps it appears
in ``CachedRequestData`` with only what changed: the tokens it gained since
its last scheduled step (``new_token_ids``: tokens sampled by the last
pipeline stage, sent to every rank so all ranks hold the same token list), the
blocks appended to its block table, and ``num_computed_tokens``, which must be
exactly where its previous step ended. A cached request is named by its
*slot*, not its id: the scheduler gives each request a slot (a small integer
below ``max_num_seqs``) in its ``NewRequestData`` and names it by that slot in
every later step until it drops it; the runners keep the slot -> request
table. The id (a string, ~30 ns and an object to decode per request) travels
once; a 256-request decode step's slots are one int32 column. With async scheduling a request may
instead gain the token its previous step sampled *without the host knowing
it* (``num_device_tokens``: 1): the runner wrote that token into the
request's row on the device right after sampling, so the step reads it there.
``finished_slots`` lists the slots whose request every rank drops (before the
step's new requests are added, so a slot freed here may be given to a new
request in the same step); a preempted request is dropped that way and later
sent again as a ``NewRequestData`` that starts at token 0 (recompute).

Tokens a request runs this step are ``all_tokens[num_computed : num_computed
+ num_scheduled_tokens]``; the last of those produces the sampled token once
the request has run its whole known sequence.

Cached requests travel as int32 columns (``columns.py``), not one Python
object per number: a 256-request decode step decodes in ~8 µs instead of
~49 µs. Build a step with ``SchedulerOutput.add_new`` / ``add_cached``: each
puts the request's diff and its token count in at once, so they cannot
disagree. The runner checks every field against its state and limits before
anything changes (``actors/model_runner/step_reader.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from itertools import chain

import msgspec

from .columns import INT32_BYTES, int32s, num_values, pack_int32, split_ragged
from .sampling import SamplingParams


class NewRequestData(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False,
                     forbid_unknown_fields=True):
    """A request scheduled for the first time: everything the runner must keep.

    ``num_computed_tokens`` is 0: there is no prefix cache, so a new request
    (also one re-sent after preemption) computes every token from the start.
    ``num_scheduled_tokens`` is how many of its tokens it runs this step
    (``SchedulerOutput.add_new`` sets it).
    """

    req_id: str
    slot: int                      # its name in later steps, in [0, max_num_seqs)
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int = 0
    # Output tokens the request already has (a request re-sent after preemption).
    output_token_ids: list[int] = []
    num_scheduled_tokens: int = 0


_FOUR_INT32, _ONE_INT32 = struct.Struct("<4i"), struct.Struct("<i")


def _column() -> bytearray:
    return bytearray()


class CachedRequestData(msgspec.Struct, kw_only=True, gc=False, forbid_unknown_fields=True):
    """Diffs for requests the runner already holds, as int32 columns (``columns.py``).

    Entry ``i`` of each per-request column belongs to the request in slot
    ``slots[i]`` (``NewRequestData.slot``). The
    tokens and blocks a request gains are ragged: ``num_new_tokens[i]`` of the
    flat ``new_token_ids`` (and ``num_new_blocks[i]`` of ``new_block_ids``)
    are request ``i``'s, after request ``i - 1``'s. ``num_device_tokens[i]``
    (0 or 1) counts tokens request ``i`` gains whose value only the runners
    hold: the token its previous step sampled, which the output rank wrote
    into its device row (and sent to the other ranks that need it). Such a
    step carries no ``new_token_ids`` for that request. An empty
    ``num_device_tokens`` means 0 for every request (steps built without
    async scheduling).
    """

    slots: bytearray = msgspec.field(default_factory=_column)
    num_computed_tokens: bytearray = msgspec.field(default_factory=_column)
    num_scheduled_tokens: bytearray = msgspec.field(default_factory=_column)
    num_new_tokens: bytearray = msgspec.field(default_factory=_column)
    new_token_ids: bytearray = msgspec.field(default_factory=_column)
    num_new_blocks: bytearray = msgspec.field(default_factory=_column)
    new_block_ids: bytearray = msgspec.field(default_factory=_column)
    num_device_tokens: bytearray = msgspec.field(default_factory=_column)

    @property
    def num_reqs(self) -> int:
        return num_values(self.slots)

    def add(self, slot: int, new_token_ids: Sequence[int], new_block_ids: Sequence[int],
            num_computed_tokens: int, num_scheduled_tokens: int,
            num_device_tokens: int = 0) -> None:
        """Appends one request's diff to every column at once, so they stay aligned;
        ``OverflowError`` (before anything changes) if a value is outside int32."""
        try:  # every value packed (range-checked) before anything changes
            scalars = _FOUR_INT32.pack(num_computed_tokens, num_scheduled_tokens,
                                       len(new_token_ids), len(new_block_ids))
            device, slot_value = _ONE_INT32.pack(num_device_tokens), _ONE_INT32.pack(slot)
        except struct.error as exc:
            raise OverflowError(f"slot {slot!r}: {exc}") from None
        tokens = pack_int32(new_token_ids) if new_token_ids else b""
        blocks = pack_int32(new_block_ids) if new_block_ids else b""
        if num_device_tokens or self.num_device_tokens:  # the column exists once one is nonzero
            missing = self.num_reqs - num_values(self.num_device_tokens)
            self.num_device_tokens += bytes(INT32_BYTES * missing) + device
        self.new_token_ids += tokens
        self.new_block_ids += blocks
        self.slots += slot_value
        self.num_computed_tokens += scalars[0:4]
        self.num_scheduled_tokens += scalars[4:8]
        self.num_new_tokens += scalars[8:12]
        self.num_new_blocks += scalars[12:16]

    @classmethod
    def from_lists(cls, slots: list[int], num_computed_tokens: list[int],
                   num_scheduled_tokens: list[int], new_token_ids: list[list[int]],
                   new_block_ids: list[list[int]], num_device_tokens: list[int] | None = None
                   ) -> CachedRequestData:
        """All requests' diffs at once, one list entry per request (the scheduler's path:
        ~0.4 µs a request against ~1 µs through ``add``); ``OverflowError`` outside int32."""
        if not (len(slots) == len(num_computed_tokens) == len(num_scheduled_tokens)
                == len(new_token_ids) == len(new_block_ids)) or (
                num_device_tokens and len(num_device_tokens) != len(slots)):
            raise ValueError("CachedRequestData.from_lists needs one entry per request in "
                             "every list")
        return cls(slots=bytearray(pack_int32(slots)),
                   num_computed_tokens=bytearray(pack_int32(num_computed_tokens)),
                   num_scheduled_tokens=bytearray(pack_int32(num_scheduled_tokens)),
                   num_new_tokens=bytearray(pack_int32(map(len, new_token_ids))),
                   new_token_ids=bytearray(pack_int32(chain.from_iterable(new_token_ids))),
                   num_new_blocks=bytearray(pack_int32(map(len, new_block_ids))),
                   new_block_ids=bytearray(pack_int32(chain.from_iterable(new_block_ids))),
                   num_device_tokens=bytearray(pack_int32(num_device_tokens or ())))

    def new_token_lists(self) -> list[list[int]]:
        """Each request's new token ids as a list (``ValueError`` if the columns disagree)."""
        return split_ragged(int32s(self.num_new_tokens), int32s(self.new_token_ids))

    def new_block_lists(self) -> list[list[int]]:
        """Each request's new block ids as a list (``ValueError`` if the columns disagree)."""
        return split_ragged(int32s(self.num_new_blocks), int32s(self.new_block_ids))


class SchedulerOutput(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False,
                      forbid_unknown_fields=True):
    """One step: which requests run how many tokens, and the state diff.

    ``step_id`` increases by one per step from the engine; workers process
    steps in submission order. The batch order is ``slots``: new requests
    first, then cached ones; the output lists its requests in that order.
    Token counts live with each request (a new request's
    ``num_scheduled_tokens``, a cached one's column entry);
    ``num_scheduled_tokens`` and ``total_num_scheduled_tokens`` are derived
    from them (never sent, so they cannot disagree).
    """

    step_id: int = 0
    scheduled_new_reqs: list[NewRequestData] = []
    scheduled_cached_reqs: CachedRequestData = msgspec.field(default_factory=CachedRequestData)
    finished_slots: list[int] = []

    @property
    def num_reqs(self) -> int:
        return len(self.scheduled_new_reqs) + self.scheduled_cached_reqs.num_reqs

    @property
    def slots(self) -> list[int]:
        """The slot of every request the step runs, in batch order."""
        return ([r.slot for r in self.scheduled_new_reqs]
                + int32s(self.scheduled_cached_reqs.slots).tolist())

    @property
    def num_scheduled_tokens(self) -> dict[int, int]:
        """Slot -> tokens its request runs this step, in batch order (built on each call)."""
        counts = {r.slot: r.num_scheduled_tokens for r in self.scheduled_new_reqs}
        cached = self.scheduled_cached_reqs
        counts.update(zip(int32s(cached.slots).tolist(),
                          int32s(cached.num_scheduled_tokens).tolist(), strict=True))
        return counts

    @property
    def total_num_scheduled_tokens(self) -> int:
        return (sum(r.num_scheduled_tokens for r in self.scheduled_new_reqs)
                + sum(int32s(self.scheduled_cached_reqs.num_scheduled_tokens)))

    def add_new(self, request: NewRequestData, num_scheduled_tokens: int) -> None:
        """Schedules a request the runner does not hold yet: all of it, and its token count."""
        request.num_scheduled_tokens = num_scheduled_tokens
        self.scheduled_new_reqs.append(request)

    def add_cached(self, slot: int, *, num_computed_tokens: int, num_scheduled_tokens: int,
                   new_token_ids: Sequence[int] = (), new_block_ids: Sequence[int] = (),
                   num_device_tokens: int = 0) -> None:
        """Schedules the request the runner holds in ``slot``: what it gained (host-known
        tokens, or its last sampled token still on the device), where it starts, how
        many run."""
        self.scheduled_cached_reqs.add(slot, new_token_ids, new_block_ids,
                                       num_computed_tokens, num_scheduled_tokens,
                                       num_device_tokens)
