"""Pipeline-parallel hand-off: a stage receives its predecessor's residual stream and sends its own.

Sends complete in the background (bounded), so a stage takes the next batch
while its activations travel; receives block the stage (it needs them).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from actorexec.actors.model.llama import IntermediateTensors
from actorexec.actors.model.parallel import ParallelContext


class StageLink:
    """Point-to-point links of one rank to the same TP rank of the stages around it."""

    # Bounded, so a stalled successor cannot make a stage queue unbounded activations
    # (one [tokens, hidden] pair per batch in flight).
    MAX_INFLIGHT_SENDS = 8

    def __init__(self, parallel: ParallelContext, hidden_size: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.parallel, self.hidden_size, self.dtype, self.device = (parallel, hidden_size,
                                                                    dtype, device)
        self._inflight: list[tuple[dist.Work, tuple[torch.Tensor, ...]]] = []

    def recv(self, num_tokens: int) -> IntermediateTensors:
        p = self.parallel
        hidden = torch.empty(num_tokens, self.hidden_size, dtype=self.dtype, device=self.device)
        residual = torch.empty_like(hidden)
        for work in (dist.irecv(hidden, p.prev_rank, group=p.pp_group),
                     dist.irecv(residual, p.prev_rank, group=p.pp_group)):
            work.wait()
        return IntermediateTensors(hidden, residual)

    def send(self, out: IntermediateTensors) -> None:
        p = self.parallel
        self._inflight = [(w, t) for w, t in self._inflight if not w.is_completed()]
        while len(self._inflight) >= self.MAX_INFLIGHT_SENDS:
            work, _ = self._inflight.pop(0)
            work.wait()
        tensors = (out.hidden.contiguous(), out.residual.contiguous())
        # Ordered per pair of ranks, so the next stage's irecvs match these sends.
        for tensor in tensors:
            work = dist.isend(tensor, p.next_rank, group=p.pp_group)
            assert work is not None
            self._inflight.append((work, tensors))
