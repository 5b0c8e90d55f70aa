"""MultiprocExecutor: one spawned worker process per rank, over ZeroMQ."""

from __future__ import annotations

import asyncio
import time

from actorexec.protocol import wire_config
from actorexec.runtime import EndpointDir, ProcessRef, free_tcp_port, spawn_actor, tcp

from .abstract import Executor


class MultiprocExecutor(Executor):
    """One process per rank (spawn start method). Why processes: one device and one
    Python interpreter per rank, and a crash that kills one rank is seen, not hung on.

    Each worker binds a ROUTER (``ipc://`` in a private 0700 directory, or
    ``tcp://host:port``); this executor connects one DEALER per worker.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._dir: EndpointDir | None = None
        self.refs: list[ProcessRef] = []  # type: ignore[assignment]

    def _endpoint(self, rank: int) -> str:
        if self.parallel_config.transport == "tcp":
            return tcp(self.parallel_config.host)
        assert self._dir is not None
        return self._dir.ipc(f"rank{rank}.sock")

    async def _start_workers(self) -> None:
        self._dir = EndpointDir()
        config = wire_config(self.config)
        init_method = f"tcp://127.0.0.1:{free_tcp_port()}"  # torch.distributed rendezvous
        starts = [spawn_actor(
            self.parallel_config.worker_cls,
            {"config": config, "rank": rank, "distributed_init_method": init_method},
            rank=rank, endpoint=self._endpoint(rank), backend=self.parallel_config.zmq_backend,
            start_timeout_s=self.parallel_config.worker_start_timeout_s,
            on_death=self._on_worker_death) for rank in range(self.world_size)]
        results = await asyncio.gather(*starts, return_exceptions=True)
        self.refs = [r for r in results if isinstance(r, ProcessRef)]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def _stop_workers(self, grace_s: float) -> None:
        try:
            # A failed executor kills its remaining workers at once: they may be stuck in
            # a collective with the dead rank, so a polite shutdown would only wait.
            if self.failure is None and self.refs:
                start = time.monotonic()
                await self._ask_shutdown(timeout_s=grace_s)
                left = max(0.1, grace_s - (time.monotonic() - start))
                await asyncio.gather(*(ref.close(left) for ref in self.refs))
        finally:
            # Also on cancellation or error: nothing outlives the executor.
            for ref in self.refs:
                ref.kill_now()
            if self._dir is not None:
                self._dir.cleanup()
