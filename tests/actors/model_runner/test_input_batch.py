"""Input preparation and block tables: positions, slots and last-token indices of a mixed step."""

from __future__ import annotations

import pytest
import torch

from actorexec.actors.model_runner.block_table import BlockTable
from actorexec.actors.model_runner.input_batch import InputBuffers
from actorexec.actors.model_runner.request_state import CachedRequestState
from actorexec.protocol import InvalidRequestError, SamplingParams

CPU = torch.device("cpu")


def _state(req_id: str, prompt: list[int], blocks: list[int], computed: int,
           output: list[int] | None = None) -> CachedRequestState:
    s = CachedRequestState.from_new_params(req_id, SamplingParams(), prompt, output)
    s.block_ids, s.num_computed_tokens = blocks, computed
    return s


def test_mixed_prefill_chunk_and_decode_flatten_correctly():
    states = {
        "p": _state("p", [10, 11, 12], [7], 0),                      # full prefill
        "c": _state("c", [20, 21, 22, 23, 24, 25], [2, 5], 2),       # chunk [2, 5) of 6
        "d": _state("d", [30, 31], [9], 2, output=[32]),             # decode 1 token
    }
    bufs = InputBuffers(max_num_tokens=16, max_num_reqs=4, max_blocks_per_req=4,
                        block_size=4, device=CPU)
    inp = bufs.prepare(["p", "c", "d"], states, {"p": 3, "c": 3, "d": 1})
    assert inp.input_ids.tolist() == [10, 11, 12, 22, 23, 24, 32]
    assert inp.positions.tolist() == [0, 1, 2, 2, 3, 4, 2]
    # slot = block * 4 + pos % 4; "c" position 4 is in its second block (5).
    assert inp.meta.slot_mapping.tolist() == [28, 29, 30, 10, 11, 20, 38]
    assert inp.logits_indices.tolist() == [2, 5, 6]
    assert inp.samples == [True, False, True]
    assert inp.meta.seq_lens.tolist() == [3, 5, 3]
    assert inp.meta.block_table.tolist() == [[7, 0], [2, 5], [9, 0]]
    assert (inp.meta.max_query_len, inp.meta.max_seq_len) == (3, 5)


def test_block_table_refuses_rows_wider_than_its_buffer():
    table = BlockTable(max_num_reqs=2, max_blocks_per_req=2, block_size=4, device=CPU)
    assert table.fill([[1], [3, 4]]).tolist() == [[1, 0], [3, 4]]
    with pytest.raises(InvalidRequestError):
        table.fill([[1, 2, 3]])


def test_slot_mapping_follows_each_requests_table():
    table = BlockTable(max_num_reqs=2, max_blocks_per_req=3, block_size=2, device=CPU)
    rows = table.fill([[4, 1, 6], [0]])
    slots = table.slot_mapping(rows, torch.tensor([0, 0, 0, 1]), torch.tensor([1, 2, 5, 1]))
    assert slots.tolist() == [9, 2, 13, 1]
