"""A test worker: the real Worker actor with model work replaced by small, observable methods.

Not a runtime mock: it runs inside the real executors, processes and sockets;
only the model runner behind it is absent.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from actorexec.actors.worker import Worker
from actorexec.protocol import (
    Config,
    InvalidRequestError,
    KVCacheConfig,
    KVCacheSpec,
    ModelRunnerOutput,
    SchedulerOutput,
)
from actorexec.runtime import expose


class EchoWorker(Worker):
    """Records what ran, so tests can assert order and that refused calls ran nothing."""

    def __init__(self, config: Config, rank: int, distributed_init_method: str) -> None:
        super().__init__(config, rank, distributed_init_method)
        self.log: list[Any] = []

    @classmethod
    def validate_config(cls, config: Config) -> None:
        """No model to check: the test worker runs none."""

    def init_device(self) -> None:
        self.log.append("init_device")

    def load_model(self) -> None:
        self.log.append("load_model")

    @expose
    def echo(self, value: Any) -> Any:
        self.log.append(value)
        return value

    @expose
    def history(self) -> list[Any]:
        # Through the work thread, so it is answered after every step queued before it
        # (execute_model runs there; answering inline could overtake a silent rank's steps).
        return self.offload(lambda: list(self.log))

    @expose
    def whoami(self) -> list[int]:
        return [self.rank, os.getpid()]

    @expose
    def slow(self, seconds: float) -> float:
        """Blocks the work thread (like a long GPU step), not the loop."""
        self.log.append("slow")
        return self.offload(lambda: (time.sleep(seconds), seconds)[1])

    @expose
    def fail(self, message: str) -> None:
        raise ValueError(message)

    @expose
    def fail_on_rank(self, rank: int, others_take_s: float = 0.0) -> int:
        if rank == self.rank:
            raise InvalidRequestError(f"rank {rank} refuses")
        return self.offload(lambda: (time.sleep(others_take_s), self.rank)[1])

    @expose
    def fail_late_on_rank(self, rank: int, after_s: float) -> int:
        """``rank`` fails ``after_s`` seconds in; every other rank answers at once."""
        if rank != self.rank:
            return self.rank

        def late() -> int:
            time.sleep(after_s)
            raise RuntimeError(f"rank {rank} failed late")

        return self.offload(late)

    @expose
    def die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput | None:
        def step() -> ModelRunnerOutput | None:
            if scheduler_output.step_id < 0:
                raise InvalidRequestError(f"bad step id {scheduler_output.step_id}")
            self.log.append(("step", scheduler_output.step_id))
            par = self.config.parallel
            if self.rank != par.world_size - par.tensor_parallel_size:
                return None
            req_ids = list(scheduler_output.num_scheduled_tokens)
            return ModelRunnerOutput(step_id=scheduler_output.step_id, req_ids=req_ids,
                                     sampled_token_ids=[[scheduler_output.step_id]] * len(req_ids))
        return self.offload(step)

    def execute_dummy_batch(self) -> None:
        self.log.append("dummy")

    def determine_available_memory(self) -> int:
        return (1 << 20) * (self.rank + 1)

    def get_kv_cache_spec(self) -> dict[str, KVCacheSpec]:
        spec = KVCacheSpec(block_size=16, num_kv_heads=2, head_size=8, dtype="float16")
        return {f"layers.{self.rank}": spec}

    def initialize_from_config(self, kv_cache_configs: list[KVCacheConfig]) -> None:
        self.log.append(("kv", kv_cache_configs[self.rank].num_blocks))

    def compile_or_warm_up_model(self) -> None:
        self.log.append("warm_up")


def record_pid(worker: EchoWorker, tag: str) -> list[Any]:
    """A module-level function for the callable-RPC opt-in: runs as fn(worker, ...)."""
    return [tag, worker.rank]
