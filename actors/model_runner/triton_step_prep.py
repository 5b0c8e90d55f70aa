"""Two Triton kernels that turn one uploaded index buffer into a step's model inputs.

Why: built from eager torch ops, a step's inputs cost ~40 small launches, and
at ~10-20 µs of host time each that was 1.0 ms of a 6 ms decode step on an
H200 (measured: apply_flush 372 µs + prepare 652 µs at batch 1), time in which
the GPU had nothing to do. Here it is one H2D copy and two launches:

- ``scatter_writes``: the step's new tokens and blocks into the persistent
  token and block tables (flat index, value pairs);
- ``prepare_inputs``: one program per request row; writes its tokens' input ids
  (gathered from the token table), positions, KV slots and per-token indices,
  its sequence / query lengths, query start, table row and block-table row;
  rows past the step's requests up to the graph bucket become padding
  (sequence length 0, KV slot -1).
"""

from __future__ import annotations

import triton
import triton.language as tl


# Counts vary every step: not specialised (Triton would recompile for 1 and for
# multiples of 16, a ~20 ms stall mid-run the first time each appears).
@triton.jit(do_not_specialize=["num_tok", "num_blk"])
def _scatter_kernel(buf_ptr, num_tok, num_blk, tok_table_ptr, blk_table_ptr,
                    BLOCK: tl.constexpr):
    # buf: [tok_idx (num_tok) | tok_val (num_tok) | blk_idx (num_blk) | blk_val (num_blk)]
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    is_tok = i < num_tok
    is_blk = (i >= num_tok) & (i < num_tok + num_blk)
    tok_idx = tl.load(buf_ptr + i, mask=is_tok, other=0)
    tok_val = tl.load(buf_ptr + num_tok + i, mask=is_tok, other=0)
    tl.store(tok_table_ptr + tok_idx, tok_val.to(tl.int32), mask=is_tok)
    j = i - num_tok
    blk_idx = tl.load(buf_ptr + 2 * num_tok + j, mask=is_blk, other=0)
    blk_val = tl.load(buf_ptr + 2 * num_tok + num_blk + j, mask=is_blk, other=0)
    tl.store(blk_table_ptr + blk_idx, blk_val.to(tl.int32), mask=is_blk)


@triton.jit(do_not_specialize=["num_reqs", "num_tokens"])
def _prepare_kernel(req_ptr, num_reqs, num_tokens, tok_table_ptr, tok_stride, blk_table_ptr,
                    blk_stride, input_ids_ptr, positions_ptr, slots_ptr, token_req_ptr,
                    token_q_ptr, seq_lens_ptr, query_lens_ptr, qsl_ptr, req_rows_ptr,
                    step_table_ptr, step_stride, block_size,
                    BLOCK_T: tl.constexpr, BLOCK_B: tl.constexpr):
    # req: [row (R) | start (R) | count (R) | token offset (R)], int64.
    r = tl.program_id(0)
    if r == 0:
        tl.store(qsl_ptr, 0)
    if r >= num_reqs:  # padding row of a graph bucket: one dummy token, attends to nothing
        pad_t = num_tokens + (r - num_reqs)
        tl.store(seq_lens_ptr + r, 0)
        tl.store(query_lens_ptr + r, 0)
        tl.store(qsl_ptr + r + 1, num_tokens)
        tl.store(slots_ptr + pad_t, -1)
        tl.store(input_ids_ptr + pad_t, 0)
        tl.store(positions_ptr + pad_t, 0)
        tl.store(token_req_ptr + pad_t, r)
        tl.store(token_q_ptr + pad_t, 0)
    else:
        row = tl.load(req_ptr + r)
        start = tl.load(req_ptr + num_reqs + r)
        count = tl.load(req_ptr + 2 * num_reqs + r)
        off = tl.load(req_ptr + 3 * num_reqs + r)
        tl.store(seq_lens_ptr + r, start + count)
        tl.store(query_lens_ptr + r, count)
        tl.store(qsl_ptr + r + 1, off + count)
        tl.store(req_rows_ptr + r, row)
        tok_row = tok_table_ptr + row * tok_stride
        blk_row = blk_table_ptr + row * blk_stride
        for i0 in range(0, count, BLOCK_T):
            i = i0 + tl.arange(0, BLOCK_T)
            mask = i < count
            pos = start + i
            ids = tl.load(tok_row + pos, mask=mask, other=0)
            block = tl.load(blk_row + pos // block_size, mask=mask, other=0).to(tl.int64)
            t = off + i
            tl.store(input_ids_ptr + t, ids.to(tl.int64), mask=mask)
            tl.store(positions_ptr + t, pos, mask=mask)
            tl.store(slots_ptr + t, block * block_size + pos % block_size, mask=mask)
            tl.store(token_req_ptr + t, (r + 0 * i).to(tl.int64), mask=mask)
            tl.store(token_q_ptr + t, i.to(tl.int64), mask=mask)
        num_blocks = (start + count + block_size - 1) // block_size
        for j0 in range(0, num_blocks, BLOCK_B):
            j = j0 + tl.arange(0, BLOCK_B)
            mask = j < num_blocks
            entry = tl.load(blk_row + j, mask=mask, other=0)
            tl.store(step_table_ptr + r * step_stride + j, entry, mask=mask)


def scatter_writes(buf, num_tok: int, num_blk: int, token_ids, block_table) -> None:
    """Applies ``num_tok`` token and ``num_blk`` block writes packed at the front of ``buf``."""
    total = num_tok + num_blk
    if total:
        block = 1024
        _scatter_kernel[(triton.cdiv(total, block),)](buf, num_tok, num_blk, token_ids,
                                                      block_table, BLOCK=block, num_warps=4)


def prepare_inputs(req, num_reqs: int, num_tokens: int, rows_to_fill: int, token_ids,
                   block_table, out, block_size: int) -> None:
    """Fills ``out``'s static buffers (an InputBuffers) for ``rows_to_fill`` rows."""
    _prepare_kernel[(rows_to_fill,)](
        req, num_reqs, num_tokens, token_ids, token_ids.stride(0), block_table,
        block_table.stride(0), out.input_ids, out.positions, out.slot_mapping, out.token_req,
        out.token_q, out.seq_lens, out.query_lens, out.query_start_loc, out.req_rows,
        out.block_table, out.block_table.stride(0), block_size,
        BLOCK_T=128, BLOCK_B=128, num_warps=4)
