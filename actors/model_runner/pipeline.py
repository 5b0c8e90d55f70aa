"""Pipeline-parallel hand-off: a stage receives its predecessor's residual stream and sends its own.

Each direction's two tensors (hidden, residual) travel as one batched P2P
(``dist.batch_isend_irecv``: one NCCL group call, one kernel) over a two-rank
group of the neighbouring stages (``ParallelContext.prev_link_group`` /
``next_link_group``). On CUDA, NCCL runs them on the process group's own stream:
a send waits only for the compute that produced its tensors, and the compute
stream never waits for a send, so the next batch's forward starts while the
activations travel. A receive makes the compute stream (not the host) wait
for its data. Sends in flight are bounded, so a stalled successor cannot make
a stage queue unbounded activations.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from actorexec.actors.model.llama import IntermediateTensors
from actorexec.actors.model.parallel import ParallelContext


class StageLink:
    """Point-to-point links of one rank to the same TP rank of the stages around it."""

    # One [tokens, hidden] pair per batch in flight; pp + 1 batches is the usual depth.
    MAX_INFLIGHT_SENDS = 8

    def __init__(self, parallel: ParallelContext, hidden_size: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.parallel, self.hidden_size, self.dtype, self.device = (parallel, hidden_size,
                                                                    dtype, device)
        self._inflight: list[tuple[list[dist.Work], tuple[torch.Tensor, ...]]] = []

    def recv(self, num_tokens: int, into: IntermediateTensors | None = None
             ) -> IntermediateTensors:
        """The previous stage's ``[num_tokens, hidden]`` pair, into ``into`` (static graph
        inputs, sliced to ``num_tokens`` rows) or fresh tensors."""
        p = self.parallel
        if into is None:
            hidden = torch.empty(num_tokens, self.hidden_size, dtype=self.dtype,
                                 device=self.device)
            into = IntermediateTensors(hidden, torch.empty_like(hidden))
        ops = [dist.P2POp(dist.irecv, t, p.prev_rank, group=p.prev_link_group)
               for t in (into.hidden, into.residual)]
        for work in dist.batch_isend_irecv(ops):
            work.wait()  # CUDA: the compute stream waits for the data; CPU: this thread does
        return into

    def send(self, out: IntermediateTensors) -> None:
        """Sends ``out`` to the next stage without waiting for it; ``out``'s tensors must not
        be overwritten later (graph outputs: send copies)."""
        p = self.parallel
        self._inflight = [(ws, t) for ws, t in self._inflight
                          if not all(w.is_completed() for w in ws)]
        while len(self._inflight) >= self.MAX_INFLIGHT_SENDS:
            for work in self._inflight.pop(0)[0]:
                work.wait()
        tensors = (out.hidden.contiguous(), out.residual.contiguous())
        # Ordered per pair of ranks, so the next stage's receives match these sends.
        ops = [dist.P2POp(dist.isend, t, p.next_rank, group=p.next_link_group)
               for t in tensors]
        self._inflight.append((dist.batch_isend_irecv(ops), tensors))  # kept alive until sent

    def drain(self) -> None:
        """Waits for every send still in flight (sleep, shutdown)."""
        for works, _ in self._inflight:
            for work in works:
                work.wait()
        self._inflight = []
