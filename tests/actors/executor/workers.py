"""A test worker: the real Worker actor with model work replaced by small, observable methods.

Not a runtime mock: it runs inside the real executors, processes and sockets;
only the model runner behind it is absent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import threading
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
from actorexec.protocol.columns import pack_int32
from actorexec.runtime import expose


class EchoRunner:
    """Stands in for the model runner behind the real ``Worker.execute_model``: echoes the
    step id as each request's token. Environment knobs (inherited by worker processes):
    ``ACTOREXEC_TEST_STEP_SLEEP_S`` makes step 13 hang that long (the watchdog test);
    ``ACTOREXEC_TEST_REPLY_LATER_S`` returns each output as a future completed that much
    later (as a device->host copy in flight would)."""

    def __init__(self, worker: EchoWorker) -> None:
        self.worker = worker
        self.hang_s = float(os.environ.get("ACTOREXEC_TEST_STEP_SLEEP_S", "0"))
        self.later_s = float(os.environ.get("ACTOREXEC_TEST_REPLY_LATER_S", "0"))

    def execute_model(self, scheduler_output: SchedulerOutput) -> Any:
        if scheduler_output.step_id < 0:
            raise InvalidRequestError(f"bad step id {scheduler_output.step_id}")
        self.worker.log.append(("step", scheduler_output.step_id))
        if self.hang_s and scheduler_output.step_id == 13:
            time.sleep(self.hang_s)
        par = self.worker.config.parallel
        output = None
        if self.worker.rank == par.world_size - par.tensor_parallel_size:
            # As a runner does: one token per request, packed from a flat host buffer.
            output = ModelRunnerOutput(  # in the step's batch order: no ids travel back
                step_id=scheduler_output.step_id,
                sampled_token_ids=pack_int32([scheduler_output.step_id]
                                             * scheduler_output.num_reqs))
        if not self.later_s:
            return output
        done: concurrent.futures.Future[ModelRunnerOutput | None] = concurrent.futures.Future()
        threading.Timer(self.later_s, done.set_result, (output,)).start()
        return done


class EchoWorker(Worker):
    """Records what ran, so tests can assert order and that refused calls ran nothing."""

    def __init__(self, config: Config, rank: int, distributed_init_method: str | None) -> None:
        super().__init__(config, rank, distributed_init_method)
        self.log: list[Any] = []

    @classmethod
    def validate_config(cls, config: Config) -> None:
        """No model to check: the test worker runs none."""

    async def on_start(self) -> None:
        mark_dir = os.environ.get("ACTOREXEC_TEST_MARK_DIR")
        if mark_dir is not None:  # lets a test see which ranks have started, and their pids
            with open(os.path.join(mark_dir, f"rank{self.rank}.pid"), "w") as f:
                f.write(str(os.getpid()))
        delay = float(os.environ.get(f"ACTOREXEC_TEST_RANK{self.rank}_START_DELAY_S", "0"))
        await asyncio.sleep(delay)

    def init_device(self) -> None:
        self.log.append("init_device")

    def load_model(self) -> None:
        self.log.append("load_model")
        self.model_runner = EchoRunner(self)

    @expose
    def echo(self, value: Any) -> Any:
        self.log.append(value)
        return value

    @expose(thread=True)
    def history(self) -> list[Any]:
        # On the work thread, so it is answered after every step queued before it.
        return list(self.log)

    @expose
    def noop(self) -> None:
        """An empty message each way (benchmarks/rpc_roundtrip.py)."""

    @expose
    def whoami(self) -> list[int]:
        return [self.rank, os.getpid()]

    @expose(thread=True)
    def slow(self, seconds: float) -> float:
        """Blocks the work thread (like a long GPU step), not the loop."""
        self.log.append("slow")
        time.sleep(seconds)
        return seconds

    @expose
    def fail(self, message: str) -> None:
        raise ValueError(message)

    @expose(thread=True)
    def fail_on_rank(self, rank: int, others_take_s: float = 0.0) -> int:
        if rank == self.rank:
            raise InvalidRequestError(f"rank {rank} refuses")
        time.sleep(others_take_s)
        return self.rank

    @expose(thread=True)
    def fail_late_on_rank(self, rank: int, after_s: float) -> int:
        """``rank`` fails ``after_s`` seconds in; every other rank answers at once."""
        if rank == self.rank:
            time.sleep(after_s)
            raise RuntimeError(f"rank {rank} failed late")
        return self.rank

    @expose(thread=True)
    def sleep_on_rank(self, rank: int, seconds: float) -> int:
        """Only ``rank`` takes ``seconds`` (a rank that falls behind)."""
        if rank == self.rank:
            time.sleep(seconds)
        return self.rank

    @expose
    def die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    @expose(thread=True)
    def die_or_fail_after(self, victim: int, after_s: float) -> int:
        """``victim`` is SIGKILLed; every other rank fails ``after_s`` later, as a rank in a
        collective that lost its peer would (gloo: connection closed)."""
        if self.rank == victim:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(after_s)
        raise RuntimeError(f"rank {self.rank}: the collective lost its peer")

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


class Placeholder:
    """A Ray actor that only holds a node's CPUs, so that a one-rank executor can only be
    placed elsewhere (test_ray_executor.py)."""

    def ready(self) -> None:
        return None
