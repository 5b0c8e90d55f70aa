"""MultiprocExecutor: one spawned worker process per rank, over shared memory or ZeroMQ."""

from __future__ import annotations

import asyncio
import os

from actorexec.protocol import wire_config
from actorexec.runtime import ProcessRef
from actorexec.runtime.endpoints import EndpointDir, tcp
from actorexec.runtime.shm_ref import ShmProcessRef
from actorexec.runtime.transport.shm_channel import ShmChannel
from actorexec.runtime.transport.shm_fds import shm_available

from .abstract import Executor

STORE_FILE = "rendezvous.store"  # torch.distributed's file store, in the private directory


class MultiprocExecutor(Executor):
    """One process per rank (spawn start method). Why processes: one device and one
    Python interpreter per rank, and a crash that kills one rank is seen, not hung on.

    ``ParallelConfig.transport``: ``shm`` (the default) writes each call once into a
    shared-memory ring that every rank reads and takes replies from a ring per rank
    (memfd memory, eventfd wake-ups: nothing spins, nothing has a file name);
    ``ipc``/``tcp``: each worker binds a ZeroMQ ROUTER (``ipc://`` in a private 0700
    directory, or ``tcp://host:port``) and this executor connects one DEALER per
    worker. With several ranks, they meet for torch.distributed through a file
    store in that directory. The directory exists only when one of the two needs it.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._dir: EndpointDir | None = None
        self._channel: ShmChannel | None = None
        self.refs: list[ProcessRef] = []  # type: ignore[assignment]

    @property
    def _transport(self) -> str:
        """The configured transport; shm falls back to ipc where memfd/eventfd are missing."""
        transport = self.parallel_config.transport
        return "ipc" if transport == "shm" and not shm_available() else transport

    def _endpoint(self, rank: int) -> str:
        if self._transport == "tcp":
            return tcp(self.parallel_config.host)
        assert self._dir is not None
        return self._dir.ipc(f"rank{rank}.sock")

    async def _start_workers(self) -> None:
        p = self.parallel_config
        if self._transport == "ipc" or self.world_size > 1:
            self._dir = EndpointDir()
        store = None if self.world_size == 1 else os.path.join(self._dir.path, STORE_FILE)
        config = wire_config(self.config)
        init_method = None if store is None else f"file://{store}"
        if self._transport == "shm":
            self._channel = ShmChannel(self.world_size)  # every ring before any rank exists
        private_dir = None if self._dir is None else self._dir.path
        shared_files = () if store is None else (store,)
        for rank in range(self.world_size):
            init = {"config": config, "rank": rank, "distributed_init_method": init_method}
            # Recorded as soon as the process exists: a cancelled start kills it on shutdown.
            if self._channel is not None:
                self.refs.append(await ShmProcessRef.spawn_on(
                    self._channel, p.worker_cls, init, rank, on_death=self._on_worker_death,
                    private_dir=private_dir, shared_files=shared_files))
                continue
            self.refs.append(await ProcessRef.spawn(
                p.worker_cls, init, rank=rank, endpoint=self._endpoint(rank),
                backend=p.zmq_backend, on_death=self._on_worker_death,
                private_dir=private_dir, shared_files=shared_files))
        await asyncio.gather(*(ref.wait_ready(p.worker_start_timeout_s) for ref in self.refs))

    async def _stop_workers(self, grace_s: float) -> None:
        try:
            # A failed executor kills its remaining workers at once: they may be stuck in
            # a collective with the dead rank, so a polite shutdown would only wait.
            if self.failure is None and self.refs and grace_s > 0:
                await self._shut_down_politely(grace_s)
        finally:
            # Also on cancellation or error: nothing outlives the executor.
            for ref in self.refs:
                ref.kill_now()
            for ref in self.refs:
                # The process handle's two pipes: closed now, not whenever the cyclic GC
                # frees the refs (an engine that restarts its executor would pile them up).
                if ref.process.exitcode is not None:
                    ref.process.close()
            if self._channel is not None:
                self._channel.close()
            if self._dir is not None:
                self._dir.cleanup()
