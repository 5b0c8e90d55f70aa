"""Handles to this rank's place in the TP x PP grid, and the collectives layers need.

Model code receives a ``ParallelContext`` instead of reading globals, so the
same layers run at world size 1 (every collective a no-op) and under TP/PP.
It holds process groups but knows nothing of how processes were started.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F


@dataclass(frozen=True)
class ParallelContext:
    """Where this rank sits: TP rank in its stage, PP stage, and the layers it holds.

    Ranks are laid out as in vLLM: ``rank = pp_rank * tp_size + tp_rank``.
    """

    tp_rank: int = 0
    tp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1
    layer_range: tuple[int, int] = (0, 0)
    tp_group: Any = None  # torch ProcessGroup | None
    pp_group: Any = None
    # Two-rank groups with the same TP rank of the previous / next stage: activations
    # travel over them (batched P2P needs every rank of its group to take part at first).
    prev_link_group: Any = None
    next_link_group: Any = None
    # PP > 1: this TP index's first- and last-stage ranks, nobody else; sampled token ids
    # travel back to the first stage over it (async scheduling). None on middle stages.
    token_group: Any = None
    # Optional faster TP all-reduce for small messages (symm_all_reduce.SymmMemAllReduce;
    # set only when tp_size > 1): sums in place, of GEMMs, fused with the norm.
    small_all_reduce: Any = None

    @property
    def rank(self) -> int:
        return self.pp_rank * self.tp_size + self.tp_rank

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def is_output_rank(self) -> bool:
        """Last stage, TP rank 0: the one rank that samples and replies."""
        return self.is_last_stage and self.tp_rank == 0

    @property
    def prev_rank(self) -> int | None:
        """Global rank of the same TP rank in the previous stage (None on stage 0)."""
        return None if self.is_first_stage else self.rank - self.tp_size

    @property
    def next_rank(self) -> int | None:
        """Global rank of the same TP rank in the next stage (None on the last stage)."""
        return None if self.is_last_stage else self.rank + self.tp_size

    @property
    def output_rank(self) -> int:
        """Global rank of the output rank (last stage, TP rank 0)."""
        return (self.pp_size - 1) * self.tp_size

    @property
    def first_stage_peer(self) -> int:
        """Global rank of this TP index in the first stage."""
        return self.tp_rank

    @property
    def last_stage_peer(self) -> int:
        """Global rank of this TP index in the last stage."""
        return (self.pp_size - 1) * self.tp_size + self.tp_rank

    @classmethod
    def single(cls, num_layers: int) -> ParallelContext:
        """World size 1: this rank holds every layer."""
        return cls(layer_range=(0, num_layers))

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over the TP group, in place; a no-op at TP size 1."""
        if self.tp_size > 1 and not (self.small_all_reduce is not None
                                     and self.small_all_reduce(x)):
            dist.all_reduce(x, group=self.tp_group)
        return x

    def begin_forward(self) -> None:
        """A forward starts (the symmetric-memory path takes its regions in a fixed order)."""
        if self.small_all_reduce is not None:
            self.small_all_reduce.begin_forward()

    def row_linear(self, x: torch.Tensor, weight: torch.Tensor, reduce: bool = True
                   ) -> torch.Tensor:
        """A row-parallel layer's ``x @ weight.T``: summed over the TP group, or with
        ``reduce=False`` this rank's partial sum, for :meth:`reduce_add_norm` to sum."""
        fast = self.small_all_reduce
        if fast is not None:
            out = fast.linear(x, weight) if reduce else fast.partial(x, weight)
            if out is not None:
                return out
        out = F.linear(x, weight)
        return self.all_reduce(out) if reduce else out

    def reduce_add_norm(self, partial: torch.Tensor, residual: torch.Tensor, norm: Any
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """``norm(sum over TP of partial, residual)``: (normed, new residual). One fused
        kernel where the symmetric-memory path holds ``partial``; else all-reduce, norm."""
        fast = self.small_all_reduce
        if fast is not None:
            fused = fast.reduce_add_norm(partial, residual, norm.weight, norm.eps)
            if fused is not None:
                return fused
            if fast.holds(partial):
                return norm(fast.sum_partial(partial), residual)
        return norm(self.all_reduce(partial), residual)

    def owned(self, x: torch.Tensor) -> torch.Tensor:
        """``x``, or a copy if it lives in the all-reduce buffer (reused by the next layer)."""
        fast = self.small_all_reduce
        return x.clone() if fast is not None and fast.holds(x) else x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Concatenates each TP rank's ``x`` along ``dim``; identity at TP size 1."""
        if self.tp_size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.tp_size)]
        dist.all_gather(parts, x.contiguous(), group=self.tp_group)
        return torch.cat(parts, dim=dim)

    def shard_range(self, size: int) -> tuple[int, int]:
        """This TP rank's [start, end) of a dimension of ``size`` split evenly."""
        per = size // self.tp_size
        return self.tp_rank * per, (self.tp_rank + 1) * per

    def kv_head_shard(self, num_kv_heads: int) -> tuple[int, int]:
        """(first kv head, kv heads) this rank holds; heads are replicated when kv < tp."""
        if num_kv_heads >= self.tp_size:
            per = num_kv_heads // self.tp_size
            return self.tp_rank * per, per
        replicas = self.tp_size // num_kv_heads
        return self.tp_rank // replicas, 1


def split_layers(num_layers: int, pp_size: int,
                 split: tuple[int, ...] | None = None) -> list[tuple[int, int]]:
    """[start, end) of each stage: ``split`` if given, else even (earlier stages take more)."""
    if split is None:
        base, extra = divmod(num_layers, pp_size)
        split = tuple(base + (1 if i < extra else 0) for i in range(pp_size))
    ranges, start = [], 0
    for n in split:
        ranges.append((start, start + n))
        start += n
    return ranges
