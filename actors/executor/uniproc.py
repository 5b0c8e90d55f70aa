"""UniProcExecutor: the one worker lives in the caller's process and event loop."""

from __future__ import annotations

from typing import ClassVar

from actorexec.runtime import LocalRef, free_tcp_port

from .abstract import Executor


class UniProcExecutor(Executor):
    """One rank, no processes. Why: the cheapest set-up (tests, one GPU, notebooks).

    The worker's handlers run on this loop in arrival order; its model work
    runs on the worker's one work thread (``Actor.offload``), so the loop stays
    responsive while a step runs and calls keep their order. Callables may be
    sent (they run on that thread as ``fn(worker, *args, **kwargs)``).
    """

    supports_callable_rpc: ClassVar[bool] = True

    async def _start_workers(self) -> None:
        init_method = f"tcp://127.0.0.1:{free_tcp_port()}"
        worker = self.worker_cls(config=self.config, rank=0, distributed_init_method=init_method)
        ref = LocalRef(worker, rank=0)
        self.refs = [ref]
        await ref.start()

    async def _stop_workers(self, grace_s: float) -> None:
        try:
            if self.refs and self.failure is None:
                await self._ask_shutdown(timeout_s=grace_s)
        finally:
            for ref in self.refs:
                await ref.close()
