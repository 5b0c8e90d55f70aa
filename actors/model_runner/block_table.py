"""The step's block-table tensor and slot mapping, built from each request's block list."""

from __future__ import annotations

import torch

from actorexec.actors.model.layers.attention import bucket_blocks
from actorexec.protocol.errors import InvalidRequestError


class BlockTable:
    """A preallocated ``[max_num_reqs, max_blocks_per_req]`` table, rows in step order.

    Rows are rewritten for each step's requests (cost: one copy of their block
    lists); slot ids for the step's tokens come from the same rows.
    """

    def __init__(self, max_num_reqs: int, max_blocks_per_req: int, block_size: int,
                 device: torch.device) -> None:
        self.block_size = block_size
        self.max_blocks_per_req = max_blocks_per_req
        self.table = torch.zeros(max_num_reqs, max_blocks_per_req, dtype=torch.int64,
                                 device=device)

    def fill(self, rows: list[list[int]]) -> torch.Tensor:
        """Writes one row per request; returns the ``[num_reqs, widest]`` view."""
        width = max((len(r) for r in rows), default=0)
        if len(rows) > self.table.shape[0] or width > self.max_blocks_per_req:
            raise InvalidRequestError(f"block table of {len(rows)} rows x {width} blocks exceeds "
                                      f"{self.table.shape[0]} x {self.max_blocks_per_req}")
        # Width rounded up to a power of two (unused entries point at block 0 and are
        # masked), so attention sees few distinct shapes.
        padded = min(bucket_blocks(max(width, 1)), self.max_blocks_per_req)
        host = torch.zeros(len(rows), padded, dtype=torch.int64)
        for i, r in enumerate(rows):
            host[i, : len(r)] = torch.as_tensor(r, dtype=torch.int64)
        view = self.table[: len(rows), : host.shape[1]]
        view.copy_(host, non_blocking=True)
        return view

    def slot_mapping(self, table: torch.Tensor, token_req: torch.Tensor,
                     positions: torch.Tensor) -> torch.Tensor:
        """Slot of each token: table[req, pos // block_size] * block_size + pos % block_size."""
        block = table[token_req, positions // self.block_size]
        return block * self.block_size + positions % self.block_size
