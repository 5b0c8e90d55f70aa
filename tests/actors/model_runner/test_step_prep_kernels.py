"""The Triton step preparation (scatter + prepare kernels) builds the same inputs as the
torch path, for prefill chunks, decode rows and graph padding; interpreter on CPU."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from tests.triton_interpret import run_kernel_check

CHECK = """
    import random, torch
    from actorexec.actors.model_runner.device_state import RequestRows
    from actorexec.actors.model_runner.input_batch import InputBuffers
    from actorexec.protocol import SamplingParams
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    random.seed(0)

    def build(triton_path):
        rows = RequestRows(max_reqs=6, max_model_len=64, max_blocks=16, device=torch.device(dev))
        bufs = InputBuffers(max_num_tokens=128, max_num_reqs=6, rows=rows, block_size=4,
                            device=torch.device(dev))
        return rows, bufs

    def run(triton_path, steps):
        rows, bufs = build(triton_path)
        snaps = []
        for adds, order, starts, counts, pad in steps:
            for req_id, tokens, blocks in adds:
                row = rows.row_of.get(req_id)
                if row is None:
                    row = rows.add(req_id, SamplingParams(), prompt_len=len(tokens))
                    rows.write_tokens(row, 0, tokens)
                    rows.write_blocks(row, 0, blocks)
                else:
                    rows.write_tokens(row, tokens[0], tokens[1])
                    rows.write_blocks(row, blocks[0], blocks[1])
            if triton_path:
                bufs._prepare_triton(order, starts, counts, None, pad)
            else:
                rows.flush(None)
                bufs._prepare_torch(order, starts, counts, None, pad)
            inp = bufs._inputs(order, starts, counts, [s + c for s, c in zip(starts, counts)], pad)
            t, r = (pad or sum(counts)), (pad or len(order))
            # Only the blocks a row's sequence reaches are read (and copied by the kernel).
            need = [-(-(s + c) // 4) for s, c in zip(starts, counts)]
            table = inp.meta.block_table[:len(order), :8].clone()
            for i, n in enumerate(need):
                table[i, n:] = 0
            snaps.append([x.cpu().clone() for x in (
                inp.input_ids, inp.positions, inp.meta.slot_mapping, inp.meta.seq_lens,
                inp.meta.query_start_loc, inp.rows, table)])
        return snaps

    toks = {k: [random.randrange(1, 1000) for _ in range(40)] for k in "abc"}
    steps = [
        ([("a", toks["a"][:9], [3, 7, 1]), ("b", toks["b"][:5], [9, 2])],
         ["a", "b"], [0, 0], [6, 5], None),                        # a: chunk 1, b: whole prompt
        ([("c", toks["c"][:3], [4]), ("b", (5, [toks["b"][5]]), (2, []))],
         ["a", "b", "c"], [6, 5, 0], [3, 1, 3], None),             # a: last chunk, b: decode
        ([("a", (9, [toks["a"][9]]), (3, [11])), ("b", (6, [toks["b"][6]]), (2, []))],
         ["b", "a"], [6, 9], [1, 1], 4),                           # decode, padded to 4
    ]
    ref, got = run(False, steps), run(True, steps)
    names = ["input_ids", "positions", "slots", "seq_lens", "qsl", "rows", "table"]
    for step, (r, g) in enumerate(zip(ref, got)):
        for name, x, y in zip(names, r, g):
            assert torch.equal(x.long(), y.long()), (step, name, x, y)
    print("ok")
"""


def test_triton_step_preparation_equals_the_torch_path() -> None:
    run_kernel_check(CHECK)
