"""The Worker actor: one per rank; device, process groups, model, KV cache, RPC surface.

Every method that touches the model runs on the actor's single work thread
(``@expose(thread=True)``): the loop takes the next message while it computes,
and replies still leave in order. ``check_health`` is answered from the loop,
never behind a running step. torch and the model runner are imported lazily
(on the work thread) so that starting a worker process stays cheap until
``init_device``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import sys
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

from .health import StepTracker, WorkerHealth

logger = logging.getLogger("actorexec.worker")


class Worker(Actor):
    """One rank. Why an actor: its mailbox orders steps, and only the methods below
    (the allow-list) can be called from outside.

    ``distributed_init_method`` is where the ranks' process group meets
    (``file://`` in the executor's private directory); None for one rank.
    """

    def __init__(self, config: Config, rank: int, distributed_init_method: str | None) -> None:
        super().__init__()
        self.config = config
        self.rank = rank
        self.distributed_init_method = distributed_init_method
        self.allow_callable_rpc = config.parallel.allow_callable_rpc
        self.device: Any = None
        self.parallel: Any = None
        self.model_runner: Any = None
        self._profiler: Any = None
        self._steps = StepTracker(rank)
        self._output_waiter: Any = None  # OutputWaiter, started by the first pending output

    @classmethod
    def validate_config(cls, config: Config) -> None:
        """Runs in the executor before any worker starts: an impossible layout
        (devices, heads, layers) raises ConfigError saying what to change."""
        from actorexec.actors.distributed import validate_parallel

        world = config.parallel.world_size
        # Ray places ranks on GPUs across nodes, and an external launcher gives each
        # process its own: this host's device count says nothing about either.
        local = config.parallel.distributed_executor_backend not in ("ray", "external_launcher")
        if config.device.device == "cuda" and local:
            import torch

            count = torch.cuda.device_count()
            if count < world:
                raise ConfigError(
                    f"tensor_parallel_size x pipeline_parallel_size = {world} needs {world} "
                    f"CUDA devices, but {count} are visible; lower the parallel sizes or "
                    "use DeviceConfig(device='cpu')")
        validate_parallel(config)

    # -- lifecycle -------------------------------------------------------------
    async def background(self) -> None:
        """The forward-progress watchdog: a step past ``step_timeout_s`` stops this worker
        loudly (ActorFatalError naming rank and step), which fails the executor."""
        limit = self.config.parallel.step_timeout_s
        if limit is not None:
            await self._steps.watch(limit)

    def _execute(self, scheduler_output: SchedulerOutput) -> Any:
        """The runner's output, or (CUDA, ids still on their way to the host) a future of it
        that the output waiter completes when the device->host copy's event fires."""
        runner = self._runner()
        execute_async = getattr(runner, "execute_model_async", None)
        if execute_async is None:  # test runners
            return runner.execute_model(scheduler_output)
        pending = execute_async(scheduler_output)
        if pending is None or pending.done():
            return None if pending is None else pending.result()
        if self._output_waiter is None:
            from actorexec.actors.model_runner.step_output import OutputWaiter

            self._output_waiter = OutputWaiter()
        return self._output_waiter.submit(pending)

    async def on_stop(self) -> None:
        """After an orderly shutdown: stop the output waiter, drop the process group on the
        thread that made it."""
        if self._output_waiter is not None:
            self._output_waiter.close()
            self._output_waiter = None
        await self.offload(self._release_process_group)

    def _release_process_group(self) -> None:
        if "torch.distributed" not in sys.modules:  # never imported: nothing to release
            return
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            if self.model_runner is not None:
                self.model_runner.drop_graphs()
            dist.destroy_process_group()

    # -- set-up ---------------------------------------------------------------
    @expose(thread=True)
    def init_device(self) -> None:
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

    @expose(thread=True)
    def load_model(self) -> None:
        from actorexec.actors.model_runner import ModelRunner

        self.model_runner = ModelRunner(self.config, self.device, self.parallel)
        self.model_runner.load_model()

    def _runner(self) -> Any:
        if self.model_runner is None:
            raise RuntimeError(f"worker rank {self.rank}: load_model has not run")
        return self.model_runner

    # -- KV cache -------------------------------------------------------------
    @expose(thread=True)
    def determine_available_memory(self) -> int:
        return self._runner().determine_available_memory()

    @expose(thread=True)
    def get_kv_cache_spec(self) -> dict[str, KVCacheSpec]:
        return self._runner().get_kv_cache_spec()

    @expose(thread=True)
    def initialize_from_config(self, kv_cache_configs: list[KVCacheConfig]) -> None:
        """Takes every rank's config (sent once to all ranks) and allocates its own."""
        self._runner().initialize_kv_cache(kv_cache_configs[self.rank])

    @expose(thread=True)
    def compile_or_warm_up_model(self) -> None:
        self._runner().compile_or_warm_up_model()

    # -- steps ----------------------------------------------------------------
    @expose(thread=True)
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput | None:
        """One step. The runner may return a ``concurrent.futures.Future`` of the output
        (device->host copy in flight): the reply then leaves when it completes, while
        this thread takes the next step; the step counts as running until then."""
        token = self._steps.begin(scheduler_output.step_id)
        try:
            output = self._execute(scheduler_output)
        except BaseException:
            self._steps.end(token)
            raise
        if isinstance(output, concurrent.futures.Future):
            output.add_done_callback(lambda _: self._steps.end(token))
        else:
            self._steps.end(token)
        return output

    @expose(thread=True)
    def get_step_timeline(self) -> list[StepTiming]:
        """When this rank ran its recent steps (oldest first, every step queued before this
        call included); clears the record."""
        return self._steps.take_timeline()

    @expose(thread=True)
    def execute_dummy_batch(self) -> None:
        self._runner().execute_dummy_batch()

    @expose(ordered=False)
    def check_health(self) -> WorkerHealth:
        """Answered from the event loop at once, ahead of replies to steps still running."""
        status = self.work_status()
        return WorkerHealth(rank=self.rank,
                            busy_method=None if status is None else status.method,
                            busy_for_s=0.0 if status is None else status.busy_for_s,
                            steps_done=self._steps.steps_done)

    # -- memory and profiling -------------------------------------------------
    @expose(thread=True)
    def sleep(self, level: int = 1) -> None:
        self._runner().sleep(level)

    @expose(thread=True)
    def wake_up(self, tags: list[str] | None = None) -> None:
        self._runner().wake_up(tags)

    @expose(thread=True)
    def start_profile(self) -> None:
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

    @expose(thread=True)
    def stop_profile(self) -> None:
        if self._profiler is None:
            raise RuntimeError("start_profile has not run")
        profiler, self._profiler = self._profiler, None
        profiler.stop()
        assert self.config.profile_dir is not None
        os.makedirs(self.config.profile_dir, exist_ok=True)
        path = os.path.join(self.config.profile_dir, f"trace_rank{self.rank}_pid{os.getpid()}.json")
        profiler.export_chrome_trace(path)
        logger.info("rank %d: profile trace written to %s", self.rank, path)
