"""Flattens one step's requests into the model's inputs, in preallocated buffers.

Token-level tensors (input ids, positions, slot ids) are built with a few
vectorised ops from per-request (start, count) pairs instead of Python loops
over tokens; buffers are allocated once for ``max_num_tokens`` (pinned and
copied on a side stream once the CUDA path lands).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actorexec.actors.model.layers.attention import AttentionMetadata
from actorexec.actors.model_runner.block_table import BlockTable
from actorexec.actors.model_runner.request_state import CachedRequestState


@dataclass
class StepInputs:
    """Everything the forward pass and the sampler need for one step."""

    req_ids: list[str]
    input_ids: torch.Tensor       # [num_tokens]
    positions: torch.Tensor       # [num_tokens]
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # [num_reqs] flat index of each request's last token
    samples: list[bool]           # per request: does it sample this step (not mid-prefill)?


class InputBuffers:
    """Preallocated per-step buffers, reused every step (no per-step allocation of the max)."""

    def __init__(self, max_num_tokens: int, max_num_reqs: int, max_blocks_per_req: int,
                 block_size: int, device: torch.device) -> None:
        self.device = device
        self.input_ids = torch.zeros(max_num_tokens, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_num_tokens, dtype=torch.int64, device=device)
        self.query_start_loc = torch.zeros(max_num_reqs + 1, dtype=torch.int64, device=device)
        self.seq_lens = torch.zeros(max_num_reqs, dtype=torch.int64, device=device)
        self.block_table = BlockTable(max_num_reqs, max_blocks_per_req, block_size, device)

    def prepare(self, order: list[str], states: dict[str, CachedRequestState],
                num_scheduled: dict[str, int]) -> StepInputs:
        """Builds the step's tensors for requests in ``order`` (their row order)."""
        reqs = [states[r] for r in order]
        starts = [s.num_computed_tokens for s in reqs]
        counts = [num_scheduled[r] for r in order]
        ids = [t for s, a, n in zip(reqs, starts, counts, strict=True) for t in s.tokens(a, a + n)]
        total, num_reqs = len(ids), len(reqs)
        q_lens = torch.as_tensor(counts, dtype=torch.int64)
        seq_lens = torch.as_tensor(starts, dtype=torch.int64) + q_lens
        # token -> (request row, index within the request's queries), vectorised.
        token_req = torch.repeat_interleave(torch.arange(num_reqs), q_lens)
        qsl = torch.zeros(num_reqs + 1, dtype=torch.int64)
        torch.cumsum(q_lens, 0, out=qsl[1:])
        token_q = torch.arange(total) - qsl[:-1][token_req]
        positions = (seq_lens - q_lens)[token_req] + token_q

        dev = self.device
        self.input_ids[:total].copy_(torch.as_tensor(ids, dtype=torch.int64), non_blocking=True)
        self.positions[:total].copy_(positions, non_blocking=True)
        self.query_start_loc[: num_reqs + 1].copy_(qsl, non_blocking=True)
        self.seq_lens[:num_reqs].copy_(seq_lens, non_blocking=True)
        table = self.block_table.fill([s.block_ids for s in reqs])
        token_req_d = token_req.to(dev)
        pos_d = self.positions[:total]
        meta = AttentionMetadata(
            slot_mapping=self.block_table.slot_mapping(table, token_req_d, pos_d),
            block_table=table, seq_lens=self.seq_lens[:num_reqs], query_lens=q_lens.to(dev),
            token_req=token_req_d, token_q=token_q.to(dev),
            max_query_len=max(counts), max_seq_len=int(seq_lens.max()))
        return StepInputs(
            req_ids=list(order), input_ids=self.input_ids[:total], positions=pos_d, meta=meta,
            logits_indices=self.query_start_loc[1 : num_reqs + 1] - 1,
            samples=[a + n == s.num_tokens for s, a, n in zip(reqs, starts, counts, strict=True)])
