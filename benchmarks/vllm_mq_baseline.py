"""vLLM's shared-memory ``MessageQueue``, wired the way its multiprocess executor wires it.

The baseline of ``rpc_roundtrip.py`` (optional: used only when vLLM imports;
``pip install --no-deps vllm`` plus ``psutil`` is enough for this module, and it
is never a dependency of actorexec). One broadcast queue from the driver to
every worker (``MessageQueue(n, n)``), one response queue per worker
(``MessageQueue(1, 1)``), handles exchanged at start-up, and each worker in
vLLM's ``worker_busy_loop``: dequeue ``(method, args, kwargs, output_rank)``,
run it, enqueue ``(status, output)`` if it is the output rank (or every rank
answers when ``output_rank`` is None). Payloads are actorexec's own
``SchedulerOutput`` and ``ModelRunnerOutput`` (vLLM pickles them), so both
sides carry the same objects.
"""

from __future__ import annotations

import multiprocessing
from typing import Any


def vllm_available() -> str | None:
    """vLLM's version if its MessageQueue imports here, else None."""
    try:
        import vllm
        from vllm.distributed.device_communicators.shm_broadcast import MessageQueue  # noqa: F401
    except Exception:
        return None
    return getattr(vllm, "__version__", "unknown")


def _worker(handle: Any, rank: int, conn: Any) -> None:
    from vllm.distributed.device_communicators.shm_broadcast import MessageQueue

    from actorexec.protocol import ModelRunnerOutput

    calls = MessageQueue.create_from_handle(handle, rank)
    replies = MessageQueue(1, 1)
    conn.send(replies.export_handle())
    calls.wait_until_ready()
    replies.wait_until_ready()
    while True:  # vLLM's worker_busy_loop
        method, args, _kwargs, output_rank = calls.dequeue(indefinite=True)
        if method == "stop":
            break
        output = None
        if method == "execute_model" and rank == (output_rank or 0):
            so = args[0]  # as EchoRunner: the step id as each request's token
            req_ids = list(so.num_scheduled_tokens)
            output = ModelRunnerOutput(step_id=so.step_id, req_ids=req_ids,
                                       sampled_token_ids=[[so.step_id]] * len(req_ids))
        if output_rank is None or rank == output_rank:
            replies.enqueue((0, output))


class VllmQueueHarness:
    """``workers`` processes behind vLLM's queues; ``call`` is one collective RPC."""

    def __init__(self, workers: int) -> None:
        from vllm.distributed.device_communicators.shm_broadcast import MessageQueue

        ctx = multiprocessing.get_context("spawn")
        self.calls = MessageQueue(workers, workers)
        pipes = [ctx.Pipe() for _ in range(workers)]
        self.processes = [ctx.Process(target=_worker, daemon=True,
                                      args=(self.calls.export_handle(), rank, child))
                          for rank, (_, child) in enumerate(pipes)]
        for p in self.processes:
            p.start()
        self.replies = [MessageQueue.create_from_handle(parent.recv(), 0) for parent, _ in pipes]
        self.calls.wait_until_ready()
        for queue in self.replies:
            queue.wait_until_ready()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def call(self, method: str, args: tuple, output_rank: int | None) -> list[Any]:
        self.calls.enqueue((method, args, {}, output_rank))
        queues = self.replies if output_rank is None else [self.replies[output_rank]]
        return [queue.dequeue()[1] for queue in queues]

    def close(self) -> None:
        self.calls.enqueue(("stop", (), {}, None))
        for p in self.processes:
            p.join(5)
            if p.exitcode is None:
                p.kill()
                p.join()
