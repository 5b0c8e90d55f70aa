"""ExecutorWithExternalLauncher: torchrun, SLURM or Kubernetes start every rank; we start none.

Each launched process runs its own engine with one in-process worker (its
rank, from the launcher's environment). The engines agree without any
scheduling messages: every process gets the same requests and schedules
deterministically, one step at a time (``max_concurrent_batches == 1``, so
no step's timing can change what the next one holds), and the only
cross-rank traffic besides the model's own collectives is what
``launcher_sync.RankSync`` agrees on: the KV block count once, and each
step's sampled tokens (broadcast from the output rank). So every rank
returns the same tokens; a caller usually prints rank 0's.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from actorexec.protocol import (
    Config,
    ConfigError,
    ExecutorFailedError,
    KVCacheConfig,
    ModelRunnerOutput,
    SchedulerOutput,
    make_kv_cache_configs,
)
from actorexec.protocol.kv_cache import num_blocks_for
from actorexec.runtime import LocalRef

from .abstract import Executor

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Set once an executor in this process has failed: the other ranks cannot follow a restart
# of this one alone (they would wait in collectives this rank never joins).
_failed_in_this_process: list[BaseException] = []


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place, as the launcher (torchrun, SLURM, ...) set it."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int

    @classmethod
    def from_environ(cls, config: Config, env: Mapping[str, str] = os.environ) -> LaunchEnv:
        """Raises ConfigError, saying what is missing or wrong, before anything starts."""
        missing = [name for name in LAUNCH_VARS if not env.get(name)]
        if missing:
            raise ConfigError(
                f"distributed_executor_backend='external_launcher' reads {', '.join(LAUNCH_VARS)}"
                f" from the launcher; {', '.join(missing)} not set. Start this script with "
                "torchrun (torchrun --nproc-per-node N script.py), or export them (under SLURM: "
                "RANK=$SLURM_PROCID, WORLD_SIZE=$SLURM_NTASKS, LOCAL_RANK=$SLURM_LOCALID)")
        try:
            launch = cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]),
                         env["MASTER_ADDR"], int(env["MASTER_PORT"]))
        except ValueError:
            raise ConfigError("RANK, WORLD_SIZE, LOCAL_RANK and MASTER_PORT must be integers, "
                              f"got {[env[n] for n in LAUNCH_VARS]}") from None
        world = config.parallel.world_size
        if launch.world_size != world:
            raise ConfigError(f"the launcher started WORLD_SIZE={launch.world_size} processes, "
                              f"but tensor_parallel_size x pipeline_parallel_size = {world}; "
                              f"launch {world} processes or change the sizes")
        if not 0 <= launch.rank < world:
            raise ConfigError(f"RANK={launch.rank} is outside 0..{world - 1}")
        return launch


class ExecutorWithExternalLauncher(Executor):
    """This process's rank only, in-process. Why: clusters that start every process
    themselves (and own their lifecycle) need no executor that spawns or places.

    ``collective_rpc`` runs on this rank's worker and returns ``[its result]``;
    ``execute_model`` returns the output rank's output on every rank. Call
    ``initialize_kv_cache`` (the engine does) before the first step.
    """

    supports_callable_rpc: ClassVar[bool] = True

    def __init__(self, config: Config) -> None:
        if _failed_in_this_process:
            raise ExecutorFailedError(
                "a rank started by an external launcher cannot restart alone (the other ranks "
                "would not follow); restart the whole launch instead (torchrun --max-restarts). "
                f"It failed with: {_failed_in_this_process[0]}")
        super().__init__(config)
        self.launch = LaunchEnv.from_environ(config)
        self._worker: Any = None
        self._sync: Any = None  # launcher_sync.RankSync, made by initialize_kv_cache

    async def _start_workers(self) -> None:
        init = "env://" if self.world_size > 1 else None  # the launcher's store and address
        self._worker = self.worker_cls(config=self.config, rank=self.launch.rank,
                                       distributed_init_method=init)
        ref = LocalRef(self._worker, rank=self.launch.rank, on_death=self._on_worker_death)
        self.refs = [ref]
        await ref.start()

    async def _stop_workers(self, grace_s: float) -> None:
        await self._stop_in_process_worker(grace_s)

    def _fail(self, error: BaseException) -> None:
        if self.failure is None and not self._shut_down:
            _failed_in_this_process.append(error)
        super()._fail(error)

    @property
    def max_concurrent_batches(self) -> int:
        """One: the next step is scheduled only after this one's tokens are applied, the
        same way on every rank (with two in flight, which finished first could differ)."""
        return 1

    async def initialize_kv_cache(self) -> KVCacheConfig:
        """Every rank sizes its cache alone, then all take the smallest block count."""
        from .launcher_sync import RankSync

        [available] = await self.determine_available_memory()
        [specs] = await self.get_kv_cache_specs()
        # Creating the group is collective: every rank gets here in the same order.
        self._sync = await self._worker.offload(RankSync, self.output_rank)
        blocks = self.config.cache.num_blocks_override
        if blocks is None:
            blocks = await self._worker.offload(self._sync.min_over_ranks,
                                                num_blocks_for(specs, available))
        [config] = make_kv_cache_configs([specs], [available], blocks)
        # The worker takes kv_cache_configs[its rank]: every entry is this rank's own.
        await self.initialize_from_config([config] * self.world_size)
        return config

    def execute_model(self, scheduler_output: SchedulerOutput,
                      timeout: float | None = None) -> asyncio.Future[ModelRunnerOutput]:
        """This rank's part of the step, then the output rank's output on every rank."""
        if self._sync is None:
            raise ExecutorFailedError("call initialize_kv_cache() before the first step")
        local = self.collective_rpc("execute_model", (scheduler_output,), timeout=timeout,
                                    unique_reply_rank=0)
        return asyncio.ensure_future(self._shared(local))

    async def _shared(self, local: asyncio.Future[ModelRunnerOutput | None]) -> ModelRunnerOutput:
        # On the work thread, after the step: in the same order as every other collective.
        return await self._worker.offload(self._sync.share_output, await local)
