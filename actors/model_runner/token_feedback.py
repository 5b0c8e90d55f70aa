"""Async scheduling on the device: each sampled token becomes its request's next input
without passing through the host.

With async scheduling the engine sends step k+1 before step k's tokens reach it;
step k+1 then says "this request gains the token its previous step sampled"
(``CachedRequestData.num_device_tokens``) and the runner reads that token from
the request's row of the device token table (``RequestRows.token_ids``). So
the token must be in that row, on every rank that reads it, before step k+1's
inputs are gathered:

- **Last stage** (``sampled``, right after sampling, on the compute stream): with
  TP > 1 the output rank broadcasts the sampled ids over its TP group (only it
  samples); every last-stage rank then scatters them into its own token table
  (the output rank needs them there for penalties and, at PP=1, every TP rank
  for inputs) and, with PP > 1, sends them to the first-stage rank of its TP
  index over a two-rank group of their own (``ParallelContext.token_group``).
- **First stage, PP > 1** (``expect``, when it runs step k): posts the receive
  of step k's ids into a fresh buffer and queues a *receipt*; nothing waits yet.
  ``take_in``, before a later step's inputs are built, waits for (on CUDA: the
  compute stream waits for) and scatters only the receipts that step needs:
  those of its requests that gain device tokens, of requests it drops (their
  rows may be reused this step, so a late scatter must not land in a new
  owner's row), any that already arrived, and the oldest beyond a small bound.

Why not wait at once: stage 0 would then wait for the last stage to finish
step k before running step k+1, and the pipeline would drain every step.
Why a separate group for the ids: the activations' P2P and the ids' P2P then
use separate NCCL communicators (and streams), so neither queue waits behind the
other. Why the output rank broadcasts rather than every TP rank sampling: the
tokens are then one rank's decision, whatever the reductions did bit for bit.
Cost per step: one scatter kernel per last-stage rank; with TP > 1 a broadcast of
``[num_reqs]`` int64; with PP > 1 one send/receive of it and a scatter on stage 0.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
import torch.distributed as dist

from actorexec.actors.model.parallel import ParallelContext
from actorexec.actors.model_runner.device_state import RequestRows, upload_ints
from actorexec.actors.model_runner.input_batch import StepInputs
from actorexec.actors.model_runner.step_plan import StepPlan

# Receipts kept before the oldest is taken in regardless (each holds [num_reqs] ids).
MAX_PENDING_RECEIPTS = 8
MAX_INFLIGHT_SENDS = 8


@dataclass
class _Receipt:
    """Step ``step_id``'s sampled ids on their way to this (first-stage) rank."""

    step_id: int
    req_ids: frozenset[str]     # the requests it carries a token for
    work: dist.Work | None
    ids: torch.Tensor           # [num_reqs] int64, every row of that step
    select: torch.Tensor | None  # [num_sampled] rows of ``ids`` that sampled (None: all)
    targets: torch.Tensor       # [num_sampled] flat indices into the token table


class TokenFeedback:
    """Puts each sampled token into its request's device row on every rank that reads it."""

    def __init__(self, parallel: ParallelContext, rows: RequestRows, device: torch.device,
                 copy_stream: torch.cuda.Stream | None, enabled: bool) -> None:
        self.parallel, self.rows, self.device, self.copy_stream = (parallel, rows, device,
                                                                   copy_stream)
        self.enabled = enabled
        self._receipts: deque[_Receipt] = deque()
        self._sends: list[tuple[dist.Work, torch.Tensor]] = []

    @property
    def num_pending(self) -> int:
        return len(self._receipts)

    # ---- where a step's sampled tokens go --------------------------------------------
    def _targets(self, inputs: StepInputs) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(rows of the step that sample, or None for all; their flat token-table index)."""
        num_reqs = len(inputs.req_ids)
        # The sampled token is the request's token at position seq_len (= start + count).
        flat = inputs.rows * self.rows.max_model_len + inputs.meta.seq_lens[:num_reqs]  # [R]
        if all(inputs.samples):
            return None, flat
        chosen = [i for i, s in enumerate(inputs.samples) if s]
        select = upload_ints(chosen, self.device, self.copy_stream)
        return select, flat.index_select(0, select)

    def _scatter(self, ids: torch.Tensor, select: torch.Tensor | None,
                 targets: torch.Tensor) -> None:
        values = ids if select is None else ids.index_select(0, select)
        self.rows.token_ids.view(-1).index_copy_(0, targets, values.to(torch.int32))

    # ---- last stage -------------------------------------------------------------------
    def sampled(self, inputs: StepInputs, ids: torch.Tensor | None) -> None:
        """After sampling, on every last-stage rank: ``ids`` [num_reqs] int64 on the output
        rank (a tensor no later step overwrites), None on its TP peers."""
        if not self.enabled or not any(inputs.samples):
            return
        p = self.parallel
        if p.tp_size > 1:
            if ids is None:
                ids = torch.empty(len(inputs.req_ids), dtype=torch.int64, device=self.device)
            dist.broadcast(ids, src=p.output_rank, group=p.tp_group)
        assert ids is not None
        select, targets = self._targets(inputs)
        self._scatter(ids, select, targets)
        if p.pp_size > 1:
            self._send(ids, p.first_stage_peer)

    def _send(self, ids: torch.Tensor, dst: int) -> None:
        self._sends = [(w, t) for w, t in self._sends if not w.is_completed()]
        while len(self._sends) >= MAX_INFLIGHT_SENDS:  # a stalled first stage: bounded
            self._sends.pop(0)[0].wait()
        work = dist.isend(ids, dst, group=self.parallel.token_group)
        assert work is not None
        self._sends.append((work, ids))  # kept alive until sent

    # ---- first stage, PP > 1 ----------------------------------------------------------
    @property
    def receives(self) -> bool:
        p = self.parallel
        return self.enabled and p.pp_size > 1 and p.is_first_stage

    def expect(self, step_id: int, inputs: StepInputs) -> None:
        """On a first-stage rank (PP > 1) that just ran a step: post the receive of the ids
        the last stage will sample for it. Nothing waits for them here."""
        if not self.receives or not any(inputs.samples):
            return
        ids = torch.empty(len(inputs.req_ids), dtype=torch.int64, device=self.device)
        work = dist.irecv(ids, self.parallel.last_stage_peer, group=self.parallel.token_group)
        select, targets = self._targets(inputs)
        sampled = frozenset(r for r, s in zip(inputs.req_ids, inputs.samples, strict=True) if s)
        self._receipts.append(_Receipt(step_id, sampled, work, ids, select, targets))

    def take_in(self, plan: StepPlan) -> None:
        """Before ``plan``'s inputs are built: scatter every receipt it depends on (see the
        module docstring), oldest first, so receipts land in step order."""
        if not self._receipts:
            return
        needed = {rec.req_id for rec in plan.requests if rec.num_device_tokens}
        needed.update(plan.finished_req_ids)
        last = -1
        for i, receipt in enumerate(self._receipts):
            if needed & receipt.req_ids:
                last = i
        count = max(last + 1, len(self._receipts) - MAX_PENDING_RECEIPTS)
        while count < len(self._receipts) and _arrived(self._receipts[count]):
            count += 1
        for _ in range(count):
            self._apply(self._receipts.popleft())

    def _apply(self, receipt: _Receipt) -> None:
        if receipt.work is not None:
            receipt.work.wait()  # CUDA: the current stream waits; CPU: the thread does
        self._scatter(receipt.ids, receipt.select, receipt.targets)

    def drain(self) -> None:
        """Takes in every receipt and finishes every send (sleep, shutdown)."""
        while self._receipts:
            self._apply(self._receipts.popleft())
        for work, _ in self._sends:
            work.wait()
        self._sends = []


def _arrived(receipt: _Receipt) -> bool:
    return receipt.work is None or receipt.work.is_completed()
