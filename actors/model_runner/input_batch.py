"""One step's model inputs, built on the device from the persistent request rows.

The host knows every length (scheduled tokens, computed tokens), so it builds
the small per-token index arrays (which request, which position) with a few
vectorised CPU ops, packs them into one pinned buffer, and sends them with a
single non-blocking copy on the copy stream. The device then gathers input
ids and KV slots from the persistent token and block tables
(``RequestRows``): no per-step copy of token lists or block tables, no host
sync. Outputs land in preallocated static buffers, so a CUDA graph captured
over them can be replayed for any step of its size (rows past the step's
requests are padding: KV slot -1 = not written, sequence length 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actorexec.actors.model.layers.attention import AttentionMetadata
from actorexec.actors.model.layers.fused_ops import use_triton
from actorexec.actors.model_runner.device_state import RequestRows, StagingRing, _upload


@dataclass
class StepInputs:
    """Everything the forward pass and the sampler need for one step (device tensors)."""

    req_ids: list[str]
    input_ids: torch.Tensor       # [num_tokens] int64 (padded to the graph bucket if any)
    positions: torch.Tensor       # [num_tokens] int64
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # [num_reqs] flat index of each request's last token
    samples: list[bool]           # per request: does it sample this step (not mid-prefill)?
    rows: torch.Tensor            # [num_reqs] int64 persistent row of each request
    num_tokens: int               # real tokens (before padding)
    is_decode: bool               # every request runs exactly one token


class InputBuffers:
    """Static per-step buffers, allocated once for ``max_num_tokens`` / ``max_num_reqs``."""

    def __init__(self, max_num_tokens: int, max_num_reqs: int, rows: RequestRows,
                 block_size: int, device: torch.device) -> None:
        self.device, self.block_size, self.rows = device, block_size, rows
        self.max_num_tokens, self.max_num_reqs = max_num_tokens, max_num_reqs

        def buf(n: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return torch.zeros(n, dtype=dtype, device=device)

        self.input_ids, self.positions = buf(max_num_tokens), buf(max_num_tokens)
        self.slot_mapping = buf(max_num_tokens)
        self.token_req, self.token_q = buf(max_num_tokens), buf(max_num_tokens)
        self.seq_lens, self.query_lens = buf(max_num_reqs), buf(max_num_reqs)
        self.query_start_loc = buf(max_num_reqs + 1)
        self.req_rows = buf(max_num_reqs)
        self.block_table = torch.zeros(max_num_reqs, rows.max_blocks, dtype=torch.int32,
                                       device=device)
        self._staging = StagingRing(8 * max_num_tokens, torch.int64, device)

    def pad_only(self, size: int) -> None:
        """Makes the first ``size`` rows pure padding (what CUDA graphs are captured over)."""
        self.slot_mapping[:size].fill_(-1)
        self.seq_lens[:size].zero_()
        self.query_lens[:size].zero_()
        self.input_ids[:size].zero_()
        self.positions[:size].zero_()
        self.query_start_loc[: size + 1].zero_()

    def prepare(self, order: list[str], starts: list[int], counts: list[int],
                num_tokens_after: list[int], copy_stream: torch.cuda.Stream | None = None,
                pad_to: int | None = None) -> StepInputs:
        """Inputs for requests ``order`` running tokens ``[starts[i], starts[i]+counts[i])``.

        ``num_tokens_after[i]``: the request's known tokens (it samples when its
        run reaches that). ``pad_to``: pad the request (and token) axis to this
        size for a CUDA graph of that bucket (decode steps only). The rows'
        queued token/block writes are applied first.
        """
        if use_triton(self.input_ids):
            self._prepare_triton(order, starts, counts, copy_stream, pad_to)
        else:
            self.rows.flush(copy_stream)  # queued token/block writes, then torch ops
            self._prepare_torch(order, starts, counts, copy_stream, pad_to)
        return self._inputs(order, starts, counts, num_tokens_after, pad_to)

    def _prepare_triton(self, order: list[str], starts: list[int], counts: list[int],
                        copy_stream: torch.cuda.Stream | None, pad_to: int | None) -> None:
        """One pinned upload, one scatter kernel, one preparation kernel (triton_step_prep)."""
        from actorexec.actors.model_runner import triton_step_prep

        tok_idx, tok_val, blk_idx, blk_val = self.rows.take_writes()
        row_of = self.rows.row_of
        offsets, off = [], 0
        for c in counts:
            offsets.append(off)
            off += c
        values = [*tok_idx, *tok_val, *blk_idx, *blk_val, *(row_of[r] for r in order),
                  *starts, *counts, *offsets]
        host, slot = self._staging.take(len(values))
        host[: len(values)] = torch.tensor(values, dtype=torch.int64)
        dev = _upload(host[: len(values)], self.device, copy_stream)
        self._staging.copied(slot, copy_stream)
        nt, nb = len(tok_idx), len(blk_idx)
        rows = self.rows
        triton_step_prep.scatter_writes(dev, nt, nb, rows.token_ids, rows.block_table)
        triton_step_prep.prepare_inputs(dev[2 * nt + 2 * nb:], len(order), off,
                                        pad_to or len(order), rows.token_ids, rows.block_table,
                                        self, self.block_size)

    def _prepare_torch(self, order: list[str], starts: list[int], counts: list[int],
                       copy_stream: torch.cuda.Stream | None, pad_to: int | None) -> None:
        """The same with torch ops (CPU; the reference the Triton path is tested against)."""
        num_reqs, total = len(order), sum(counts)
        rows = [self.rows.row_of[r] for r in order]
        q_lens = torch.as_tensor(counts, dtype=torch.int64)
        begin = torch.as_tensor(starts, dtype=torch.int64)
        qsl = torch.zeros(num_reqs + 1, dtype=torch.int64)
        torch.cumsum(q_lens, 0, out=qsl[1:])
        is_decode = total == num_reqs
        if is_decode:  # the common case, no repeat_interleave needed
            token_req = torch.arange(num_reqs)
            token_q = torch.zeros(num_reqs, dtype=torch.int64)
            positions = begin
        else:
            token_req = torch.repeat_interleave(torch.arange(num_reqs), q_lens)
            token_q = torch.arange(total) - qsl[:-1][token_req]
            positions = begin[token_req] + token_q
        seq_lens = begin + q_lens
        # One pinned buffer, one copy: [positions | token_req | token_q | rows | qsl | seq | q].
        n = 4 * total + 3 * num_reqs + 1
        host, slot = self._staging.take(n)
        sizes = [total, total, total, num_reqs, num_reqs + 1, num_reqs, num_reqs]
        offset = 0
        for part, size in zip((positions, token_req, token_q, torch.as_tensor(rows), qsl,
                               seq_lens, q_lens), sizes, strict=True):
            host[offset: offset + size] = part
            offset += size
        dev = _upload(host[:offset], self.device, copy_stream)
        self._staging.copied(slot, copy_stream)
        d_pos, d_req, d_q, d_rows, d_qsl, d_seq, d_qlen = dev.split(sizes)

        if pad_to is not None and pad_to > num_reqs:  # graph padding rows
            self.slot_mapping[total:pad_to].fill_(-1)
            self.seq_lens[num_reqs:pad_to].zero_()
            self.query_lens[num_reqs:pad_to].zero_()
            self.input_ids[total:pad_to].zero_()
            self.positions[total:pad_to].zero_()
            self.query_start_loc[num_reqs + 1: pad_to + 1].fill_(total)
        self.positions[:total].copy_(d_pos)
        self.token_req[:total].copy_(d_req)
        self.token_q[:total].copy_(d_q)
        self.req_rows[:num_reqs].copy_(d_rows)
        self.query_start_loc[: num_reqs + 1].copy_(d_qsl)
        self.seq_lens[:num_reqs].copy_(d_seq)
        self.query_lens[:num_reqs].copy_(d_qlen)
        tables = self.rows
        tok_row = d_rows[d_req]                                            # [T]
        self.input_ids[:total].copy_(tables.token_ids[tok_row, d_pos])
        block = tables.block_table[tok_row, d_pos // self.block_size].to(torch.int64)
        self.slot_mapping[:total].copy_(block * self.block_size + d_pos % self.block_size)
        torch.index_select(tables.block_table, 0, d_rows, out=self.block_table[:num_reqs])

    def _inputs(self, order: list[str], starts: list[int], counts: list[int],
                num_tokens_after: list[int], pad_to: int | None) -> StepInputs:
        num_reqs, total = len(order), sum(counts)
        width, req_width = pad_to or total, pad_to or num_reqs
        meta = AttentionMetadata(
            slot_mapping=self.slot_mapping[:width], block_table=self.block_table[:req_width],
            seq_lens=self.seq_lens[:req_width], query_lens=self.query_lens[:req_width],
            token_req=self.token_req[:width], token_q=self.token_q[:width],
            max_query_len=max(counts), max_seq_len=int(max(s + c for s, c in zip(
                starts, counts, strict=True))),
            query_start_loc=self.query_start_loc[: req_width + 1], is_decode=total == num_reqs)
        return StepInputs(
            req_ids=list(order), input_ids=self.input_ids[:width],
            positions=self.positions[:width], meta=meta,
            logits_indices=self.query_start_loc[1: num_reqs + 1] - 1,
            samples=[s + c == t for s, c, t in zip(starts, counts, num_tokens_after,
                                                   strict=True)],
            rows=self.req_rows[:num_reqs], num_tokens=total, is_decode=total == num_reqs)
