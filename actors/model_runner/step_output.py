"""A step's output on its way device -> host: sampled ids copied on a side stream.

The runner queues the copy into pinned memory and returns at once with a
``PendingOutput``; whoever needs the values (the worker's reply path) waits
on the copy's event — off the work thread, so the next step is already being
prepared while this one's tokens travel. On the CPU the output is ready at once.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable

import torch

from actorexec.protocol.columns import pack_int32
from actorexec.protocol.outputs import ModelRunnerOutput, TokenLogprobs


class PendingOutput:
    """``ModelRunnerOutput`` whose token ids may still be in a device->host copy.

    ``host_tokens``: pinned ``[num_reqs]`` int64 (one token per scheduled request)
    filled by the copy that ``event`` follows; only the requests in
    ``sample_rows`` (those not in the middle of a prefill) report theirs.
    ``result`` turns the host values into the output (Python lists); ``wait``
    blocks (releasing the GIL) until the copy is done.
    """

    def __init__(self, step_id: int, num_reqs: int, sample_rows: list[int],
                 host_tokens: torch.Tensor | None, event: torch.cuda.Event | None,
                 logprobs: Callable[[], dict[int, list[TokenLogprobs]]] | None = None) -> None:
        self.step_id, self.num_reqs, self.sample_rows = step_id, num_reqs, sample_rows
        self.host_tokens, self.event, self._logprobs = host_tokens, event, logprobs
        self._result: ModelRunnerOutput | None = None

    @classmethod
    def ready(cls, output: ModelRunnerOutput) -> PendingOutput:
        pending = cls(output.step_id, output.num_reqs, [], None, None)
        pending._result = output
        return pending

    def done(self) -> bool:
        return self._result is not None or self.event is None or self.event.query()

    def wait(self) -> None:
        if self._result is None and self.event is not None:
            self.event.synchronize()

    def result(self) -> ModelRunnerOutput:
        """The output (waits for the copy if it is still running)."""
        if self._result is None:
            self.wait()
            num_reqs = self.num_reqs
            values = self.host_tokens.tolist() if self.host_tokens is not None else []
            counts = b""  # every row sampled (a decode step): no counts are sent
            if len(self.sample_rows) < num_reqs:
                sampled = [0] * num_reqs
                for row in self.sample_rows:
                    sampled[row] = 1
                counts = pack_int32(sampled)
                values = [values[row] for row in self.sample_rows]  # ascending rows
            self._result = ModelRunnerOutput(
                step_id=self.step_id, num_sampled=counts,
                sampled_token_ids=pack_int32(values[:num_reqs]),
                logprobs=self._logprobs() if self._logprobs is not None else {})
        return self._result


def copy_to_host(tensors: list[torch.Tensor], side_stream: torch.cuda.Stream | None
                 ) -> tuple[list[torch.Tensor], torch.cuda.Event | None]:
    """Queues each tensor -> pinned host memory on ``side_stream``; returns (hosts, event).

    The side stream waits for the compute stream's work so far (the tensors'
    producer), so the compute stream is free to take the next step; one event
    follows the last copy.
    """
    if not tensors[0].is_cuda:
        return tensors, None
    assert side_stream is not None
    compute = torch.cuda.current_stream(tensors[0].device)
    side_stream.wait_stream(compute)
    hosts = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
    with torch.cuda.stream(side_stream):
        for host, tensor in zip(hosts, tensors, strict=True):
            host.copy_(tensor, non_blocking=True)
        event = torch.cuda.Event()
        event.record(side_stream)
    for tensor in tensors:
        tensor.record_stream(side_stream)
    return hosts, event


class OutputWaiter:
    """One thread that waits for pending outputs' copies, in step order, and completes
    their futures: the worker replies when a step's ids reach the host while its work
    thread already prepares the next step. Owned by the worker (``close`` at shutdown).
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[PendingOutput, concurrent.futures.Future] | None]
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="output-waiter", daemon=True)
        self._thread.start()

    def submit(self, pending: PendingOutput) -> concurrent.futures.Future[ModelRunnerOutput]:
        future: concurrent.futures.Future[ModelRunnerOutput] = concurrent.futures.Future()
        self._queue.put((pending, future))
        return future

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            pending, future = item
            try:
                future.set_result(pending.result())  # waits on the copy's event (GIL released)
            except BaseException as exc:  # e.g. a CUDA error surfacing at the sync
                future.set_exception(exc)

    def close(self) -> None:
        """Finishes what was submitted, then stops the thread."""
        self._queue.put(None)
        self._thread.join(timeout=10.0)
