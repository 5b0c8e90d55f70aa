"""Vocab-parallel token embedding and LM head: each TP rank holds a slice of the vocabulary."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from actorexec.actors.model.layers.linear import WeightSource, copy_checked, read_rows
from actorexec.actors.model.parallel import ParallelContext


class VocabParallelEmbedding(nn.Module):
    """Rows [start, end) of the embedding table on this rank; others' ids give zeros, summed."""

    def __init__(self, vocab_size: int, hidden: int, parallel: ParallelContext,
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.parallel, self.vocab_size = parallel, vocab_size
        # Pad so every rank holds the same number of rows (padding rows stay zero).
        self.per_rank = -(-vocab_size // parallel.tp_size)
        self.start = parallel.tp_rank * self.per_rank
        self.end = min(self.start + self.per_rank, vocab_size)
        self.weight = nn.Parameter(torch.empty(self.per_rank, hidden, dtype=dtype),
                                   requires_grad=False)

    def weight_loader(self, param: torch.Tensor, source: WeightSource,
                      shard_id: Any = None) -> None:
        rows = read_rows(source, 0, self.start, self.end - self.start, self.vocab_size)
        param.data.zero_()
        copy_checked(param.data[: rows.shape[0]], rows)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.parallel.tp_size == 1:
            return F.embedding(input_ids, self.weight)  # [T, hidden]
        mine = (input_ids >= self.start) & (input_ids < self.end)
        local = torch.where(mine, input_ids - self.start, 0)
        out = F.embedding(local, self.weight) * mine.unsqueeze(-1).to(self.weight.dtype)
        return self.parallel.all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Logits for this rank's vocab slice, gathered over TP and trimmed to the real vocab."""

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        local = F.linear(hidden, self.weight)  # [num_reqs, per_rank]
        return self.parallel.all_gather(local, dim=-1)[:, : self.vocab_size]  # [num_reqs, V]
