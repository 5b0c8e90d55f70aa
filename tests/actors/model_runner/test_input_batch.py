"""Input preparation from the persistent device rows: ids, positions, slots, tables, padding."""

from __future__ import annotations

import torch

from actorexec.actors.model_runner.device_state import RequestRows
from actorexec.actors.model_runner.input_batch import InputBuffers
from actorexec.protocol import SamplingParams

CPU = torch.device("cpu")


def _rows_with(requests: dict[str, tuple[list[int], list[int]]]) -> RequestRows:
    rows = RequestRows(max_reqs=4, max_model_len=16, max_blocks=4, device=CPU)
    for req_id, (tokens, blocks) in requests.items():
        row = rows.add(req_id, SamplingParams(), prompt_len=len(tokens))
        rows.write_tokens(row, 0, tokens)
        rows.write_blocks(row, 0, blocks)
    rows.flush(None)
    return rows


def test_mixed_prefill_chunk_and_decode_flatten_correctly():
    rows = _rows_with({"p": ([10, 11, 12], [7]), "c": ([20, 21, 22, 23, 24, 25], [2, 5]),
                       "d": ([30, 31, 32], [9])})
    bufs = InputBuffers(max_num_tokens=16, max_num_reqs=4, rows=rows, block_size=4, device=CPU)
    # p: full prefill; c: chunk [2, 5) of 6; d: decode its 3rd token.
    inp = bufs.prepare(["p", "c", "d"], starts=[0, 2, 2], counts=[3, 3, 1],
                       num_tokens_after=[3, 6, 3])
    assert inp.input_ids.tolist() == [10, 11, 12, 22, 23, 24, 32]
    assert inp.positions.tolist() == [0, 1, 2, 2, 3, 4, 2]
    # slot = block * 4 + pos % 4; "c" position 4 is in its second block (5).
    assert inp.meta.slot_mapping.tolist() == [28, 29, 30, 10, 11, 20, 38]
    assert inp.logits_indices.tolist() == [2, 5, 6]
    assert inp.samples == [True, False, True]
    assert inp.meta.seq_lens.tolist() == [3, 5, 3]
    assert inp.meta.block_table[:, :2].tolist() == [[7, 0], [2, 5], [9, 0]]
    assert (inp.meta.max_query_len, inp.meta.max_seq_len) == (3, 5)
    assert not inp.is_decode


def test_decode_step_padded_for_a_graph_marks_padding_rows():
    rows = _rows_with({"a": ([1, 2, 3], [0]), "b": ([4, 5], [3])})
    bufs = InputBuffers(max_num_tokens=8, max_num_reqs=4, rows=rows, block_size=4, device=CPU)
    inp = bufs.prepare(["b", "a"], starts=[1, 2], counts=[1, 1], num_tokens_after=[2, 3],
                       pad_to=4)
    assert inp.is_decode and inp.num_tokens == 2
    assert inp.input_ids.tolist() == [5, 3, 0, 0]
    assert inp.meta.slot_mapping.tolist() == [13, 2, -1, -1]   # -1: not written
    assert inp.meta.seq_lens.tolist() == [2, 3, 0, 0]          # 0: attends to nothing
    assert inp.rows.tolist() == [rows.row_of["b"], rows.row_of["a"]]


def test_rows_are_reused_after_a_request_leaves():
    rows = _rows_with({"a": ([1], [0])})
    first = rows.row_of["a"]
    rows.remove("a")
    assert rows.add("b", SamplingParams(top_k=3, temperature=0.5, seed=9), prompt_len=4) == first
    rows.flush(None)
    assert rows.int_params[:, first].tolist() == [3, 9, 1, 4]
    assert rows.float_params[0, first].item() == 0.5
