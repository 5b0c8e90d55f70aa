"""PP=2 with async scheduling, through the engine over gloo: pp + 1 = 3 steps in flight
(the output rank's own step timestamps, against when the engine sent each step, show
it), and a rank killed while async steps are in flight still fails every stream within a
second and leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from actorexec.actors.engine import AsyncEngine
from actorexec.protocol import (
    CacheConfig,
    Config,
    ModelConfig,
    ParallelConfig,
    RestartConfig,
    SamplingParams,
    SchedulerConfig,
)
from tests.actors.executor.test_real_workers_leave_nothing import exited
from tests.checkpoints import make_tiny_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wider than the other tiny checkpoints: a stage's work dominates a message's cost."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("wide-llama"), "llama",
                                hidden_size=256, intermediate_size=768, num_hidden_layers=4)


def config(model: Path) -> Config:
    return Config(model=ModelConfig(model=str(model)),
                  cache=CacheConfig(block_size=4, cpu_kv_cache_bytes=32 * 1024 * 1024),
                  parallel=ParallelConfig(pipeline_parallel_size=2,
                                          distributed_executor_backend="mp",
                                          worker_start_timeout_s=120),
                  scheduler=SchedulerConfig(max_num_batched_tokens=256, max_num_seqs=8),
                  restart=RestartConfig(enabled=False))  # fail-stop: what the kill test checks


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


def prompt(i: int) -> list[int]:
    return [3 + (i * 31 + j * 7) % 120 for j in range(24)]


async def drain(engine: AsyncEngine, i: int, n: int) -> list[int]:
    outs = [out async for out in engine.generate(prompt(i), greedy(n))]
    return outs[-1].token_ids


@pytest.mark.timeout(300)
async def test_three_pp2_steps_are_in_flight_at_once_in_the_workers_own_timestamps(wide_llama):
    async with await AsyncEngine.create(config(wide_llama)) as engine:
        assert engine.executor.max_concurrent_batches == 3
        sent: dict[int, float] = {}  # step id -> when the engine sent it (same clock)
        execute_model = engine.executor.execute_model

        def stamped(scheduler_output, *args, **kwargs):
            sent[scheduler_output.step_id] = time.monotonic()
            return execute_model(scheduler_output, *args, **kwargs)

        engine.executor.execute_model = stamped
        await drain(engine, 0, 2)                    # warm-up
        await engine.executor.get_step_timeline()    # drop its records
        await asyncio.gather(*(drain(engine, i, 24) for i in range(8)))
        stage0, stage1 = await engine.executor.get_step_timeline()
        assert engine.peak_in_flight == 3
    last = {t.step_id: t for t in stage1}
    assert {t.step_id for t in stage0} == set(last)  # every step ran on both stages
    # Step k + 2 was sent before stage 1 (the output rank) had finished step k: steps k,
    # k + 1 and k + 2 were all in the workers' hands at once. (Whether stage 0 had already
    # started k + 2 then depends on how the two stages share this machine's cores.)
    three = [k for k in last if k + 2 in sent and sent[k + 2] < last[k].end]
    assert len(three) >= len(last) // 2, (
        f"only {len(three)} of {len(last)} steps overlapped three deep")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("victim", [0, 1], ids=["first-stage", "output-rank"])
async def test_killing_a_rank_with_async_steps_in_flight_fails_every_stream_within_a_second(
        wide_llama, victim):
    engine = await AsyncEngine.create(config(wide_llama))
    try:
        pids = [ref.pid for ref in engine.executor.refs]
        private = engine.executor._dir.path
        started = asyncio.Event()

        async def consume(i: int) -> None:
            async for _ in engine.generate(prompt(i), greedy(200)):
                started.set()

        tasks = [asyncio.create_task(consume(i)) for i in range(6)]
        await asyncio.wait_for(started.wait(), 60)
        while len(engine._in_flight) < 3:          # async steps in flight: three deep
            await asyncio.sleep(0.001)
        killed_at = time.monotonic()
        os.kill(pids[victim], signal.SIGKILL)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        failed_within = time.monotonic() - killed_at
        assert all(isinstance(r, Exception) for r in results), results
        assert any(str(pids[victim]) in str(r) for r in results), results
        assert failed_within < 1.0, f"streams failed {failed_within:.2f} s after the kill"
        assert engine.is_failed
    finally:
        await engine.shutdown()
    deadline = time.monotonic() + 5
    while not all(exited(pid) for pid in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert all(exited(pid) for pid in pids), "a worker outlived the engine"
    assert not os.path.exists(private), os.listdir(private)
