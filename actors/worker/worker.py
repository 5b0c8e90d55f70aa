"""The Worker actor: one per rank; device, process groups, model, KV cache, RPC surface.

Every method that touches the model runs on the actor's single work thread
(``Actor.offload``): the handler returns at once with a future, so the next
message is decoded while this one computes, and replies still leave in order.
torch and the model runner are imported lazily (in the work thread) so that
starting a worker process stays cheap until ``init_device``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from actorexec.protocol import (
    Config,
    KVCacheConfig,
    KVCacheSpec,
    ModelRunnerOutput,
    SchedulerOutput,
    StepTiming,
)
from actorexec.protocol.errors import ConfigError
from actorexec.runtime import Actor, expose

logger = logging.getLogger("actorexec.worker")


class Worker(Actor):
    """One rank. Why an actor: its mailbox orders steps, and only the methods below
    (the allow-list) can be called from outside."""

    def __init__(self, config: Config, rank: int, distributed_init_method: str) -> None:
        self.config = config
        self.rank = rank
        self.distributed_init_method = distributed_init_method
        self.allow_callable_rpc = config.parallel.allow_callable_rpc
        self.device: Any = None
        self.parallel: Any = None
        self.model_runner: Any = None
        self._profiler: Any = None
        self._timeline: list[StepTiming] = []  # bounded: see _TIMELINE_LEN

    _TIMELINE_LEN = 4096

    @classmethod
    def validate_config(cls, config: Config) -> None:
        """Runs in the executor before any worker starts: an impossible layout
        (devices, heads, layers) raises ConfigError saying what to change."""
        from actorexec.actors.distributed import validate_parallel

        world = config.parallel.world_size
        if config.device.device == "cuda":
            import torch

            count = torch.cuda.device_count()
            if count < world:
                raise ConfigError(
                    f"tensor_parallel_size x pipeline_parallel_size = {world} needs {world} "
                    f"CUDA devices, but {count} are visible; lower the parallel sizes or "
                    "use DeviceConfig(device='cpu')")
        validate_parallel(config)

    # -- set-up ---------------------------------------------------------------
    @expose
    def init_device(self) -> None:
        return self.offload(self._init_device)

    def _init_device(self) -> None:
        import torch

        from actorexec.actors.distributed import init_distributed

        if self.config.device.device == "cuda":
            local_rank = self.rank % torch.cuda.device_count()
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
            # Host-side tensor work here is tiny (step inputs); more intra-op threads only
            # spin. Measured on 2 x H200: with torch's default (one thread per core) in
            # each of two ranks, every 2-rank layout ran ~2x slower per step than 1 rank.
            torch.set_num_threads(1)
        else:
            self.device = torch.device("cpu")
            # Ranks share the host's cores: without this each rank starts one thread per
            # core and they thrash (seen as 10x slower gloo steps on 2 cores, 4 ranks).
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.config.parallel.world_size))
        self.parallel = init_distributed(self.config, self.rank, self.distributed_init_method,
                                         self.device)

    @expose
    def load_model(self) -> None:
        return self.offload(self._load_model)

    def _load_model(self) -> None:
        from actorexec.actors.model_runner import ModelRunner

        self.model_runner = ModelRunner(self.config, self.device, self.parallel)
        self.model_runner.load_model()

    def _runner(self) -> Any:
        if self.model_runner is None:
            raise RuntimeError(f"worker rank {self.rank}: load_model has not run")
        return self.model_runner

    # -- KV cache -------------------------------------------------------------
    @expose
    def determine_available_memory(self) -> int:
        return self.offload(lambda: self._runner().determine_available_memory())

    @expose
    def get_kv_cache_spec(self) -> dict[str, KVCacheSpec]:
        return self.offload(lambda: self._runner().get_kv_cache_spec())

    @expose
    def initialize_from_config(self, kv_cache_configs: list[KVCacheConfig]) -> None:
        """Takes every rank's config (sent once to all ranks) and allocates its own."""
        config = kv_cache_configs[self.rank]
        return self.offload(lambda: self._runner().initialize_kv_cache(config))

    @expose
    def compile_or_warm_up_model(self) -> None:
        return self.offload(lambda: self._runner().compile_or_warm_up_model())

    # -- steps ----------------------------------------------------------------
    @expose
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput | None:
        return self.offload(self._timed_execute, scheduler_output)

    def _timed_execute(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput | None:
        start = time.monotonic()
        try:
            return self._runner().execute_model(scheduler_output)
        finally:
            if len(self._timeline) >= self._TIMELINE_LEN:
                del self._timeline[: self._TIMELINE_LEN // 2]
            self._timeline.append(StepTiming(scheduler_output.step_id, self.rank, start,
                                             time.monotonic()))

    @expose
    def get_step_timeline(self) -> list[StepTiming]:
        """When this rank ran its recent steps (oldest first); clears the record."""
        timeline, self._timeline = self._timeline, []
        return timeline

    @expose
    def execute_dummy_batch(self) -> None:
        return self.offload(lambda: self._runner().execute_dummy_batch())

    @expose
    def check_health(self) -> None:
        """Answers when the mailbox reaches it: the loop and the socket are alive."""
        return None

    # -- memory and profiling -------------------------------------------------
    @expose
    def sleep(self, level: int = 1) -> None:
        return self.offload(lambda: self._runner().sleep(level))

    @expose
    def wake_up(self, tags: list[str] | None = None) -> None:
        return self.offload(lambda: self._runner().wake_up(tags))

    @expose
    def start_profile(self) -> None:
        return self.offload(self._start_profile)

    def _start_profile(self) -> None:
        import torch

        if self.config.profile_dir is None:
            raise ValueError("Config.profile_dir is not set; it names where traces go")
        if self._profiler is not None:
            raise RuntimeError("the profiler is already running")
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.config.device.device == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._profiler = torch.profiler.profile(activities=activities, record_shapes=True)
        self._profiler.start()

    @expose
    def stop_profile(self) -> None:
        return self.offload(self._stop_profile)

    def _stop_profile(self) -> None:
        if self._profiler is None:
            raise RuntimeError("start_profile has not run")
        profiler, self._profiler = self._profiler, None
        profiler.stop()
        assert self.config.profile_dir is not None
        os.makedirs(self.config.profile_dir, exist_ok=True)
        path = os.path.join(self.config.profile_dir, f"trace_rank{self.rank}_pid{os.getpid()}.json")
        profiler.export_chrome_trace(path)
        logger.info("rank %d: profile trace written to %s", self.rank, path)

    # -- shutdown -------------------------------------------------------------
    @expose
    def shutdown(self) -> None:
        self.request_stop()
        return self.offload(self._release)

    def _release(self) -> None:
        """Drop the process group (if any) so no rendezvous socket lingers."""
        if "torch.distributed" not in sys.modules:  # never imported: nothing to release
            return
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
