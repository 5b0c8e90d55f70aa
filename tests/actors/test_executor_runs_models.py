"""Issue 3 through the executor: `await executor.execute_model(...)` on both backends
gives transformers' greedy tokens, and bad input leaves the worker serving."""

from __future__ import annotations

import pytest

from actorexec.actors.executor import Executor
from actorexec.protocol import (
    CacheConfig,
    Config,
    InvalidRequestError,
    ModelConfig,
    ParallelConfig,
    SchedulerConfig,
)
from tests.actors.model_runner.sim_scheduler import SimScheduler
from tests.actors.reference import ARRIVALS, expected_tokens
from tests.checkpoints import ARCHITECTURES

BLOCK_SIZE, NUM_BLOCKS = 4, 64


def model_config(path: str, backend: str, tp: int = 1, pp: int = 1,
                 num_blocks: int = NUM_BLOCKS, max_tokens: int = 64) -> Config:
    return Config(model=ModelConfig(model=str(path)),
                  cache=CacheConfig(block_size=BLOCK_SIZE, num_blocks_override=num_blocks),
                  scheduler=SchedulerConfig(max_num_batched_tokens=max_tokens, max_num_seqs=8),
                  parallel=ParallelConfig(tensor_parallel_size=tp, pipeline_parallel_size=pp,
                                          distributed_executor_backend=backend,
                                          worker_start_timeout_s=120))


def fresh_sim(token_budget: int) -> SimScheduler:
    return SimScheduler(None, token_budget, blocks=list(range(NUM_BLOCKS)),
                        block_size=BLOCK_SIZE)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["uni", "mp"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
async def test_greedy_tokens_through_the_executor_match_transformers(checkpoints, arch,
                                                                     backend):
    path = str(checkpoints[arch])
    want = expected_tokens(path)
    async with await Executor.create(model_config(path, backend)) as executor:
        await executor.initialize_kv_cache()
        for token_budget, suffix in ((256, ""), (5, "-chunked")):
            arrivals = {k: [(r + suffix, p, n) for r, p, n in v] for k, v in ARRIVALS.items()}
            got = await fresh_sim(token_budget).run_async(executor.execute_model, arrivals)
            assert got == {r + suffix: t for r, t in want.items()}, suffix


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["uni", "mp"])
async def test_a_bad_step_raises_typed_and_the_next_step_is_still_correct(checkpoints,
                                                                           backend):
    path = str(checkpoints["llama"])
    async with await Executor.create(model_config(path, backend)) as executor:
        await executor.initialize_kv_cache()
        sim = fresh_sim(256)
        sim.admit(ARRIVALS, 0)
        bad = sim.schedule()
        bad.scheduled_new_reqs[0].prompt_token_ids[0] = 10_000  # outside the vocabulary
        with pytest.raises(InvalidRequestError, match="vocab"):
            await executor.execute_model(bad)
        assert not executor.is_failed
        got = await fresh_sim(256).run_async(executor.execute_model, ARRIVALS)
        assert got == expected_tokens(path)


@pytest.mark.timeout(180)
async def test_profile_sleep_and_wake_up_leave_the_model_serving_the_same_tokens(checkpoints,
                                                                                 tmp_path):
    path = str(checkpoints["llama"])
    traces = tmp_path / "traces"
    config = model_config(path, "mp").replace(profile_dir=str(traces))
    async with await Executor.create(config) as executor:
        await executor.initialize_kv_cache()
        await executor.check_health()
        await executor.execute_dummy_batch()
        await executor.start_profile()
        before = await fresh_sim(256).run_async(executor.execute_model, ARRIVALS)
        await executor.stop_profile()
        assert len(list(traces.glob("trace_rank0_*.json"))) == 1
        await executor.sleep(2)  # drops the KV cache and the weights
        await executor.wake_up()  # reloads both
        after = await fresh_sim(256).run_async(executor.execute_model, ARRIVALS)
    assert before == after == expected_tokens(path)
