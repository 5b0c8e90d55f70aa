"""Int32 wire columns: steps and outputs carry per-request numbers as columns, decode
to one object per column, and refuse columns that do not line up (typed)."""

from __future__ import annotations

import msgspec
import pytest

from actorexec.protocol import ModelRunnerOutput, ProtocolError, SchedulerOutput
from actorexec.protocol.codec import PayloadDecoder
from actorexec.protocol.columns import int32s, pack_int32, split_ragged
from tests.protocol.columns import ints


def _step() -> SchedulerOutput:
    so = SchedulerOutput(step_id=4)
    so.add_cached(3, num_computed_tokens=10, num_scheduled_tokens=1, new_token_ids=[7])
    so.add_cached(0, num_computed_tokens=3, num_scheduled_tokens=4, new_block_ids=[5, 6])
    so.add_cached(7, num_computed_tokens=8, num_scheduled_tokens=1, num_device_tokens=1)
    return so


def test_a_step_built_request_by_request_reads_back_per_request() -> None:
    c = _step().scheduled_cached_reqs
    assert ints(c.slots) == [3, 0, 7] and _step().slots == [3, 0, 7] and c.num_reqs == 3
    assert ints(c.num_computed_tokens) == [10, 3, 8]
    assert ints(c.num_scheduled_tokens) == [1, 4, 1]
    assert c.new_token_lists() == [[7], [], []] and c.new_block_lists() == [[], [5, 6], []]
    # The device-token column appears with the first nonzero entry, zero-filled before it.
    assert ints(c.num_device_tokens) == [0, 0, 1]
    assert _step().num_scheduled_tokens == {3: 1, 0: 4, 7: 1}
    assert _step().total_num_scheduled_tokens == 6


def test_a_step_decodes_to_columns_not_per_request_objects() -> None:
    so = _step()
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(so), type=SchedulerOutput)
    assert decoded == so
    assert type(decoded.scheduled_cached_reqs.new_token_ids) is bytearray


def test_a_value_outside_int32_is_refused_before_the_step_changes() -> None:
    so = _step()
    with pytest.raises(OverflowError):
        so.add_cached(1, num_computed_tokens=2**31, num_scheduled_tokens=1)
    with pytest.raises(OverflowError):
        so.add_cached(1, num_computed_tokens=1, num_scheduled_tokens=1,
                      new_token_ids=[1, 2**40])
    with pytest.raises(OverflowError, match="slot"):
        so.add_cached(2**31, num_computed_tokens=1, num_scheduled_tokens=1)
    assert so == _step()


def test_outputs_round_trip_with_and_without_counts() -> None:
    decode = ModelRunnerOutput.from_lists(1, [[5], [6]])
    assert decode.num_sampled == b""          # one token each: no counts travel
    mixed = ModelRunnerOutput.from_lists(2, [[5], [], [7, 8]])
    assert ints(mixed.num_sampled) == [1, 0, 2]
    for out in (decode, mixed):
        raw = msgspec.msgpack.encode(out)
        assert PayloadDecoder(ModelRunnerOutput).decode([raw]) == out
    assert mixed.sampled_lists() == [[5], [], [7, 8]] and mixed.num_reqs == 3
    assert decode.sampled_lists() == [[5], [6]] and decode.num_reqs == 2


@pytest.mark.parametrize("fields, message", [
    ({"num_sampled": pack_int32([2]), "sampled_token_ids": pack_int32([5])}, "do not add up"),
    ({"num_sampled": pack_int32([2, -1]), "sampled_token_ids": pack_int32([5])},
     "do not add up"),
    ({"num_sampled": b"\x01\x00\x00\x00\x00", "sampled_token_ids": pack_int32([5])},
     "multiple of 4"),
    ({"sampled_token_ids": b"\x05\x00\x00"}, "multiple of 4"),
    ({"sampled_token_ids": pack_int32([5, 6]),
      "logprobs": {"2": [[[5], [-0.5], 1]]}}, "logprobs"),
    ({"sampled_token_ids": pack_int32([5, 6]),
      "logprobs": {2: [[[5], [-0.5], 1]]}}, "batch positions outside"),
    ({"sampled_token_ids": pack_int32([5, 6]),
      "logprobs": {-1: [[[5], [-0.5], 1]]}}, "batch positions outside"),
])
def test_an_output_whose_columns_do_not_line_up_decodes_as_a_protocol_error(fields,
                                                                              message) -> None:
    raw = msgspec.msgpack.encode({"step_id": 1, **fields})
    with pytest.raises(ProtocolError, match=message):
        PayloadDecoder(ModelRunnerOutput).decode([raw])


def test_an_output_built_from_lists_by_mistake_says_how_to_build_one() -> None:
    with pytest.raises(ValueError, match="from_lists"):
        ModelRunnerOutput(step_id=1, sampled_token_ids=[[5]])  # type: ignore[arg-type]


def test_ragged_columns_split_and_refuse_counts_that_do_not_add_up() -> None:
    counts, flat = int32s(pack_int32([2, 0, 1])), int32s(pack_int32([4, 5, 6]))
    assert split_ragged(counts, flat) == [[4, 5], [], [6]]
    with pytest.raises(ValueError, match="add up"):
        split_ragged(int32s(pack_int32([2, 2])), flat)
    with pytest.raises(ValueError, match=">= 0"):
        split_ragged(int32s(pack_int32([4, -1])), flat)
