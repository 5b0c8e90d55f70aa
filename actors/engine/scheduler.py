"""FCFS continuous-batching scheduler that emits diff-style ``SchedulerOutput``s.

Each ``schedule()`` call builds one step from the requests that are not in
flight: running requests first (decode, or the next prefill chunk), then
waiting ones in arrival order while the token budget, ``max_num_seqs`` and
free blocks allow. When a running request needs a block and none is free,
the latest-arrived running request that is not in flight is preempted by
recompute: the oldest request is never preempted for a younger one, so it
always progresses (choosing the last admitted instead let two requests that
cannot both fit preempt each other forever).

Slots: a request the runners hold is named in steps by its slot, a number
below ``max_num_seqs`` given when it is first scheduled (``NewRequestData.slot``)
and freed when the runners are told to drop it; a step's output lists its
requests in the step's batch order, which the scheduler keeps per step.

Preemption, as the runner sees it: the victim's slot goes into that step's
``finished_slots`` (the runner drops it) and its blocks are freed. Later it
is sent again as a ``NewRequestData`` with its prompt, the outputs so far in
``output_token_ids`` and ``num_computed_tokens=0``, so every token is
recomputed. This uses only the plain new/finished paths of the runner; no
waiting request is admitted in a step that preempted, so a drop and its
re-add never share a step.

Async scheduling (``SchedulerConfig.async_scheduling``): a request whose one
in-flight step will sample its next token may be scheduled again before that
step's output arrives; the new step adds that token as a *device token*
(``num_device_tokens=1``), which the runners hold on the device. Its
``num_output_placeholders`` count such tokens until their values arrive. A
request is in at most two in-flight steps, at least ``pipeline_parallel_size``
steps apart (so each pipeline stage holds one of its steps at a time), and
never in one whose sample would surely be discarded (``max_tokens``,
``max_model_len``). Outputs must be applied in step order. A request that a
stop rule finishes when its output arrives may have one more step in flight:
that step's token (the overshoot) is discarded, and the runners drop the
request with the next step. With ``pipeline_parallel_size`` P > 1 a step
takes at most a P-th of the live requests, so P steps share them and every
stage has a batch.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

from actorexec.protocol import (
    CachedRequestData,
    InvalidRequestError,
    ModelRunnerOutput,
    NewRequestData,
    ProtocolError,
    SamplingParams,
    SchedulerConfig,
    SchedulerOutput,
    TokenLogprobs,
)

from .block_pool import BlockPool
from .request import FinishReason, Request, RequestStatus


class Scheduler:
    """Decides, step by step, which requests run how many tokens on which blocks.

    Pure Python and synchronous: the engine calls ``schedule()`` and
    ``update_from_output()``; nothing here awaits, so it is unit-testable
    without an executor.
    """

    # The runners hold one unclaimed sample per request, so a request takes in at most one
    # device token per step: it can be in its sampling step and one more.
    MAX_STEPS_IN_FLIGHT_PER_REQUEST = 2

    def __init__(self, config: SchedulerConfig, num_blocks: int, block_size: int,
                 max_model_len: int, eos_token_ids: Iterable[int] = (),
                 pipeline_parallel_size: int = 1) -> None:
        self.config = config
        self.async_scheduling = config.async_scheduling
        self.pipeline_parallel_size = pipeline_parallel_size
        self.pool = BlockPool(num_blocks, block_size)
        self.max_model_len = max_model_len
        self.eos_token_ids = frozenset(eos_token_ids)
        self.requests: dict[str, Request] = {}
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []       # admission order
        self._to_drop: list[int] = []          # slots the runner must forget next step
        self._free_slots = self._all_slots()
        self._step_id = 0
        self._batches: dict[int, list[Request]] = {}   # step id -> its requests, batch order
        self._sampling: dict[int, list[Request]] = {}  # step id -> requests it samples for
        self._arrivals = 0
        self.num_preemptions = 0
        self.num_device_tokens = 0              # tokens steps took in from the device (async)
        self.num_discarded_tokens = 0           # sampled after their request finished

    # ----------------------------------------------------------------- requests
    def add_request(self, req_id: str, prompt_token_ids: list[int],
                    sampling_params: SamplingParams) -> Request:
        """Queues a request; raises ``InvalidRequestError`` (changing nothing) if it cannot fit."""
        if req_id in self.requests:
            raise InvalidRequestError(f"request id {req_id!r} is already running")
        n = len(prompt_token_ids)
        if n == 0:
            raise InvalidRequestError(f"request {req_id!r} has an empty prompt")
        if n > self.max_model_len:
            raise InvalidRequestError(
                f"request {req_id!r}: prompt of {n} tokens is longer than the maximum model "
                f"length {self.max_model_len}")
        longest = self._longest(n, sampling_params.max_tokens)
        if self.pool.blocks_for(longest) > self.pool.num_blocks:
            raise InvalidRequestError(
                f"request {req_id!r} may reach {longest} tokens, more than the whole KV cache "
                f"holds ({self.pool.num_blocks} blocks of {self.pool.block_size})")
        if not self.config.enable_chunked_prefill and longest > self.config.max_num_batched_tokens:
            raise InvalidRequestError(
                f"request {req_id!r} may reach {longest} tokens but chunked prefill is off and "
                f"max_num_batched_tokens={self.config.max_num_batched_tokens}")
        req = Request(req_id, list(prompt_token_ids), sampling_params, arrival=self._arrivals)
        self._arrivals += 1
        self.requests[req_id] = req
        self.waiting.append(req)
        return req

    def abort_request(self, req_id: str) -> Request | None:
        """Finishes a request now and frees its blocks (its in-flight output is ignored)."""
        req = self.requests.get(req_id)
        if req is None or req.is_finished:
            return None
        self._finish(req, FinishReason.ABORT)
        return req

    def requeue_all_for_recompute(self, num_blocks: int) -> list[Request]:
        """The executor was replaced: every unfinished request waits to be recomputed.

        As after a preemption, but for everyone and with nothing to tell the
        runner (the fresh one knows no request): blocks and in-flight state are
        dropped, each request is sent again as new with its prompt and the
        outputs so far, in arrival order. The block pool is rebuilt with
        ``num_blocks`` (the new KV cache may differ in size). Returns the
        requests that no longer fit the new cache, finished with ``"error"``.
        """
        self.pool = BlockPool(num_blocks, self.pool.block_size)
        self.running, self._to_drop, self._free_slots = [], [], self._all_slots()
        self._batches.clear()   # the steps in flight never reply
        self._sampling.clear()
        unfit: list[Request] = []
        live: list[Request] = []
        for req in list(self.requests.values()):
            if req.is_finished:         # aborted while in flight: that output never comes
                del self.requests[req.req_id]
                continue
            req.status = RequestStatus.WAITING
            req.block_ids, req.num_computed_tokens = [], 0
            req.num_in_flight, req.num_output_placeholders, req.last_step_id = 0, 0, -1
            req.slot, req.num_sent_tokens, req.num_sent_blocks = None, 0, 0
            longest = self._longest(len(req.prompt_token_ids), req.sampling_params.max_tokens)
            fits = self.pool.blocks_for(longest) <= num_blocks
            (live if fits else unfit).append(req)
        self.waiting = deque(sorted(live, key=lambda r: r.arrival))
        for req in unfit:
            req.status, req.finish_reason = RequestStatus.FINISHED, FinishReason.ERROR
            del self.requests[req.req_id]
        return unfit

    def _all_slots(self) -> list[int]:
        """Every runner slot, free (popped lowest first)."""
        return list(range(self.config.max_num_seqs - 1, -1, -1))

    def _longest(self, num_prompt_tokens: int, max_tokens: int) -> int:
        """The most tokens a request may hold in the KV cache."""
        # The last sampled token is never fed back, so it needs no KV slot.
        return min(num_prompt_tokens + max_tokens, self.max_model_len + 1) - 1

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ----------------------------------------------------------------- schedule
    def schedule(self) -> SchedulerOutput | None:
        """The next step, or ``None`` when nothing can run now (all busy or idle)."""
        budget = self.config.max_num_batched_tokens
        max_reqs = self._max_reqs_per_step()
        scheduled: dict[str, int] = {}
        order: list[Request] = []
        preemptions = self.num_preemptions
        short_of_blocks = False

        for req in list(self.running):
            if budget == 0 or len(order) >= max_reqs:
                break
            if req.status is not RequestStatus.RUNNING or not self._can_schedule(req):
                continue
            num_new = min(req.num_tokens_with_placeholders - req.num_computed_tokens, budget)
            if num_new <= 0:
                continue
            if not self._reserve_blocks(req, num_new, scheduled):
                short_of_blocks = True
                continue
            if req.status is not RequestStatus.RUNNING:   # preempted itself
                short_of_blocks = True
                continue
            scheduled[req.req_id] = num_new
            order.append(req)
            budget -= num_new

        # A step short of blocks admits nobody; nor does one that preempted (even if every
        # running request got its blocks): a victim must not come straight back in the
        # step that drops it.
        preempted = self.num_preemptions != preemptions
        admit = not (short_of_blocks or preempted)
        while admit and self.waiting and budget > 0 and len(order) < max_reqs:
            if len(self.running) >= self.config.max_num_seqs:
                break
            req = self.waiting[0]
            if req.isolated and any(r.isolated for r in self.running):
                break   # suspects of an executor failure run one at a time (supervisor.py)
            num_new = req.num_tokens
            if num_new > budget:
                if not self.config.enable_chunked_prefill:
                    break       # FCFS: nobody overtakes a prompt waiting for budget
                num_new = budget
            need = self.pool.blocks_for(num_new)
            if not self.pool.can_allocate(need):
                break
            self.waiting.popleft()
            req.block_ids = self.pool.allocate(need)
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            scheduled[req.req_id] = num_new
            order.append(req)
            budget -= num_new

        if preempted:
            # Preempted requests rejoin the queue in arrival order, ahead of new ones.
            self.waiting = deque(sorted(self.waiting, key=lambda r: r.arrival))
        if not order:
            return None
        return self._build_output(order, scheduled)

    def _max_reqs_per_step(self) -> int:
        """With P pipeline stages, a P-th of the live requests: P steps share them."""
        pp = self.pipeline_parallel_size
        live = min(len(self.running) + len(self.waiting), self.config.max_num_seqs)
        return max(1, math.ceil(live / pp)) if pp > 1 else self.config.max_num_seqs

    def _can_schedule(self, req: Request) -> bool:
        """Not in flight; or (async) in one in-flight step, far enough back in the pipeline,
        and sure to need another token after that step's."""
        if not req.in_flight:
            return True
        if (not self.async_scheduling
                or req.num_in_flight >= self.MAX_STEPS_IN_FLIGHT_PER_REQUEST
                or self._step_id - req.last_step_id < self.pipeline_parallel_size):
            return False
        outputs = len(req.output_token_ids) + req.num_output_placeholders
        return (outputs < req.sampling_params.max_tokens
                and req.num_tokens_with_placeholders < self.max_model_len)

    def _reserve_blocks(self, req: Request, num_new: int, scheduled: dict[str, int]) -> bool:
        """Makes ``req`` own blocks for ``num_new`` more tokens, preempting if needed.

        Returns False when ``req`` cannot run this step (it may have been the victim).
        """
        need = self.pool.blocks_for(req.num_computed_tokens + num_new) - len(req.block_ids)
        while not self.pool.can_allocate(need):
            victim = self._pick_victim(req, scheduled)
            if victim is None:
                return False
            self._preempt(victim)
            if victim is req:
                return False
        req.block_ids += self.pool.allocate(need)
        return True

    def _pick_victim(self, req: Request, scheduled: dict[str, int]) -> Request | None:
        """Whom ``req`` preempts: the latest-arrived running request that is neither in flight
        nor already in this step; ``req`` itself only if no running request is younger.
        None: ``req`` waits, for a younger request in flight (or in this step) to come back
        and yield (FCFS priority: an older request never yields its blocks to a younger
        one, so the oldest always progresses)."""
        victim = max((r for r in self.running if not r.in_flight and r.req_id not in scheduled),
                     key=lambda r: r.arrival, default=None)
        if victim is req and any(r.arrival > req.arrival for r in self.running):
            return None
        return victim

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.pool.free(req.block_ids)
        req.block_ids = []
        req.num_computed_tokens = 0
        req.status = RequestStatus.WAITING
        req.num_preemptions += 1
        self.num_preemptions += 1
        self._forget(req)
        self.waiting.appendleft(req)

    def _forget(self, req: Request) -> None:
        """Tells the runner (next step) to drop ``req``; it is re-sent in full if it runs again."""
        if req.slot is not None:
            # Free at once: the runners drop it before the next step's new requests.
            self._to_drop.append(req.slot)
            self._free_slots.append(req.slot)
            req.slot = None
            req.num_sent_tokens = 0
            req.num_sent_blocks = 0

    def _build_output(self, order: list[Request], scheduled: dict[str, int]) -> SchedulerOutput:
        out = SchedulerOutput(step_id=self._step_id, finished_slots=self._to_drop)
        sampling: list[Request] = []
        new_reqs: list[Request] = []
        cached_reqs: list[Request] = []
        # Cached requests' diffs, one entry each, packed into columns at the end.
        slots: list[int] = []
        starts: list[int] = []
        counts: list[int] = []
        tokens: list[list[int]] = []
        blocks: list[list[int]] = []
        device: list[int] = []
        for req in order:
            total = req.num_tokens_with_placeholders
            if req.slot is None:   # never in flight: the host knows all its tokens
                # Running requests are at most max_num_seqs, so a slot is free.
                req.slot = self._free_slots.pop()
                out.add_new(NewRequestData(
                    req_id=req.req_id, slot=req.slot,
                    prompt_token_ids=list(req.prompt_token_ids),
                    sampling_params=req.sampling_params, block_ids=list(req.block_ids),
                    output_token_ids=list(req.output_token_ids)), scheduled[req.req_id])
                new_reqs.append(req)
            else:
                # The runner gains the host-known tokens it lacks, then (async) the one
                # sampled token whose value is still on the device.
                sent, known, prompt = (req.num_sent_tokens, req.num_tokens,
                                       len(req.prompt_token_ids))
                slots.append(req.slot)
                cached_reqs.append(req)
                starts.append(req.num_computed_tokens)
                counts.append(scheduled[req.req_id])
                tokens.append(req.output_token_ids[sent - prompt:known - prompt])
                blocks.append(req.block_ids[req.num_sent_blocks:])
                device.append(total - max(sent, known))
            req.num_sent_tokens = total
            req.num_sent_blocks = len(req.block_ids)
            req.num_computed_tokens += scheduled[req.req_id]
            if req.num_computed_tokens == total:   # it runs its whole sequence: it samples
                req.num_output_placeholders += 1
                sampling.append(req)
            req.num_in_flight += 1
            req.last_step_id = self._step_id
        num_device = sum(device)
        self.num_device_tokens += num_device
        out.scheduled_cached_reqs = CachedRequestData.from_lists(
            slots, starts, counts, tokens, blocks, device if num_device else None)
        self._batches[self._step_id] = new_reqs + cached_reqs
        self._sampling[self._step_id] = sampling
        self._to_drop = []
        self._step_id += 1
        return out

    # ------------------------------------------------------------------ outputs
    def batch(self, step_id: int) -> list[Request]:
        """The requests of an in-flight step, in its batch order (the order of its output)."""
        return list(self._batches[step_id])

    def update_from_output(self, step: SchedulerOutput, output: ModelRunnerOutput
                           ) -> list[tuple[Request, list[int], list[TokenLogprobs]]]:
        """Applies one step's sampled tokens; returns ``(request, new tokens, their logprobs)``
        per live request.

        ``output`` lists the step's requests in its batch order; one for another
        step, or for another number of requests, is a ``ProtocolError`` (changing
        nothing). Requests that finish here are released (blocks freed, runner
        told to drop them next step). Aborted requests' tokens are ignored, and so
        is the token of a step that was in flight when its request finished (the
        overshoot of async scheduling). With async scheduling, steps' outputs
        must arrive in step order (they do: workers reply in order).
        """
        batch = self._batches.get(step.step_id)
        if batch is None or output.step_id != step.step_id or output.num_reqs != len(batch):
            sent = "not in flight" if batch is None else f"{len(batch)} requests"
            raise ProtocolError(f"the output of step {output.step_id} ({output.num_reqs} "
                                f"requests) does not answer step {step.step_id} ({sent})")
        sampled = output.sampled_lists()
        del self._batches[step.step_id]
        for req in self._sampling.pop(step.step_id, ()):
            req.num_output_placeholders -= 1
        updates: list[tuple[Request, list[int], list[TokenLogprobs]]] = []
        for i, (req, tokens) in enumerate(zip(batch, sampled, strict=True)):
            req.num_in_flight -= 1
            if req.is_finished:   # aborted, or stopped while this step ran (the overshoot)
                self.num_discarded_tokens += len(tokens)
                self._release_if_done(req)
                continue
            new: list[int] = []
            for token in tokens:
                req.output_token_ids.append(token)
                req.isolated = False        # it got past whatever it was suspected of
                new.append(token)
                reason = self._stop_reason(req, token)
                if reason is not None:
                    self._finish(req, reason)
                    break
            updates.append((req, new, output.logprobs.get(i, [])[:len(new)]))
            self._release_if_done(req)
        return updates

    def _release_if_done(self, req: Request) -> None:
        """Forgets a finished request once no step is in flight for it (not a newer
        request that reuses its id)."""
        if req.is_finished and not req.in_flight and self.requests.get(req.req_id) is req:
            del self.requests[req.req_id]

    def _stop_reason(self, req: Request, token: int) -> FinishReason | None:
        sp = req.sampling_params
        n_out = len(req.output_token_ids)
        if n_out >= sp.min_tokens:
            if not sp.ignore_eos and token in self.eos_token_ids:
                return FinishReason.STOP
            if token in sp.stop_token_ids:
                return FinishReason.STOP
        if n_out >= sp.max_tokens or req.num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    def _finish(self, req: Request, reason: FinishReason) -> None:
        if req.status is RequestStatus.RUNNING:
            self.running.remove(req)
        elif req.status is RequestStatus.WAITING:
            self.waiting.remove(req)
        if req.block_ids:
            # Safe even while in flight: workers run steps in order, so any later
            # owner of these blocks writes them only after this step's writes.
            self.pool.free(req.block_ids)
            req.block_ids = []
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason
        self._forget(req)
        self._release_if_done(req)
