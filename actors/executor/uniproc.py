"""UniProcExecutor: the one worker lives in the caller's process and event loop."""

from __future__ import annotations

import gc
import sys
from typing import ClassVar

from actorexec.runtime import LocalRef

from .abstract import Executor


class UniProcExecutor(Executor):
    """One rank, no processes. Why: the cheapest set-up (tests, one GPU, notebooks).

    The worker's loop methods run on this loop in arrival order; its
    ``thread=True`` methods (model work) on the worker's one work thread, so
    the loop stays responsive while a step runs and calls keep their order.
    Failures arrive as the same classes as from the mp executor. Callables may
    be sent (they run on that thread as ``fn(worker, *args, **kwargs)``).
    """

    supports_callable_rpc: ClassVar[bool] = True

    async def _start_workers(self) -> None:
        worker = self.worker_cls(config=self.config, rank=0, distributed_init_method=None)
        ref = LocalRef(worker, rank=0, on_death=self._on_worker_death)
        self.refs = [ref]
        await ref.start()

    async def _stop_workers(self, grace_s: float) -> None:
        try:
            await self._stop_in_process_worker(grace_s)
        finally:
            # The worker (model, KV cache) lives in this process: drop it now, so that a
            # fresh executor started next (an engine restart) sizes its KV cache from free
            # device memory. A step still hung on the old work thread keeps what it
            # references until it returns. (On the CPU the cache has a fixed budget.)
            self.refs = []
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_initialized():
                gc.collect()                # the actor's reference cycles
                torch.cuda.empty_cache()    # back to the driver, where the sizing looks
