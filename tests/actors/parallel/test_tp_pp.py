"""Issue 5 on the CPU: TP and PP over gloo through the mp executor.

Greedy tokens for a mixed batch equal transformers' (which equal the single-rank
runner's, see model_runner tests) for TP=2, PP=2 and TP=2 x PP=2, for every
architecture; two batches really overlap under PP=2; killing any rank mid-step
fails the in-flight futures within a second and leaves no process behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from actorexec.actors.executor import Executor
from actorexec.protocol import ActorDiedError, ConfigError, ExecutorFailedError
from tests.actors.model_runner.sim_scheduler import SimScheduler
from tests.actors.reference import ARRIVALS, expected_tokens
from tests.actors.test_executor_runs_models import NUM_BLOCKS, fresh_sim, model_config
from tests.checkpoints import ARCHITECTURES

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (2, 2)], ids=["tp2", "pp2", "tp2xpp2"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
async def test_parallel_greedy_tokens_equal_the_single_rank_tokens(checkpoints, arch, tp, pp):
    path = str(checkpoints[arch])
    async with await Executor.create(model_config(path, "mp", tp, pp)) as executor:
        assert executor.max_concurrent_batches == pp + 1   # async scheduling is on
        assert executor.output_rank == tp * pp - tp
        await executor.initialize_kv_cache()
        got = await fresh_sim(5).run_async(executor.execute_model, ARRIVALS)  # chunked
    assert got == expected_tokens(path)


BIG_BLOCKS = 4 * NUM_BLOCKS


@pytest.mark.timeout(240)
async def test_kv_heads_replicate_when_fewer_than_tp_ranks(checkpoints):
    path = str(checkpoints["llama"])  # 2 KV heads over 4 TP ranks: each KV head on 2 ranks
    async with await Executor.create(model_config(path, "mp", 4, 1)) as executor:
        await executor.initialize_kv_cache()
        got = await fresh_sim(256).run_async(executor.execute_model, ARRIVALS)
    assert got == expected_tokens(path)


def disjoint_sims(n: int) -> list[SimScheduler]:
    """``n`` schedulers over disjoint KV blocks and runner slots: their batches may be in
    flight together."""
    share, slots = BIG_BLOCKS // n, 8 // n
    return [SimScheduler(None, 256, blocks=list(range(k * share, (k + 1) * share)),
                         block_size=4, slots=list(range(k * slots, (k + 1) * slots)))
            for k in range(n)]


@pytest.mark.timeout(240)
async def test_two_batches_overlap_across_pipeline_stages(checkpoints):
    path = str(checkpoints["llama"])
    async with await Executor.create(model_config(path, "mp", 1, 2, BIG_BLOCKS, 256)) as executor:
        await executor.initialize_kv_cache()
        sims = disjoint_sims(2)
        for k, sim in enumerate(sims):  # big prefills: stage work dominates message cost
            for i in range(4):
                sim.add(f"s{k}-{i}", [1 + (7 * i + j) % 120 for j in range(48)], max_tokens=3)
        await executor.get_step_timeline()  # drop warm-up records
        overlapped = 0
        for _ in range(3):
            steps = [sim.schedule() for sim in sims]
            for sim, so in enumerate(steps):
                so.step_id = 1000 * (sim + 1) + sims[sim].step_id
            futures = [executor.execute_model(so) for so in steps]  # both sent before awaiting
            for sim, so, fut in zip(sims, steps, futures, strict=True):
                sim.update(so, await fut)
            stage0, stage1 = await executor.get_step_timeline()
            first, second = steps[0].step_id, steps[1].step_id
            s0_second = next(t for t in stage0 if t.step_id == second)
            s1_first = next(t for t in stage1 if t.step_id == first)
            # Stage 0 began batch 2 while stage 1 was still running batch 1.
            overlapped += s0_second.start < s1_first.end
        assert overlapped >= 2, "stage 0 should start batch 2 before stage 1 finishes batch 1"


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    return alive


@pytest.mark.timeout(240)
@pytest.mark.parametrize("victim", [0, 1], ids=["first-stage", "output-rank"])
async def test_killing_any_rank_mid_step_fails_in_flight_steps_within_a_second(checkpoints,
                                                                              victim):
    path = str(checkpoints["qwen3"])
    async with await Executor.create(model_config(path, "mp", 1, 2, BIG_BLOCKS, 256)) as executor:
        await executor.initialize_kv_cache()
        pids = [ref.pid for ref in executor.refs]
        # Eight disjoint batches in flight at once, one request each: the runners hold at
        # most max_num_seqs=8 live requests (two each made steps 5-8 invalid, refused
        # on every rank before the kill could fail them: the test failed on main).
        sims = disjoint_sims(8)
        for k, sim in enumerate(sims):
            sim.add(f"k{k}", [1 + (5 * k + j) % 120 for j in range(48)], max_tokens=4)
        in_flight = [executor.execute_model(sim.schedule()) for sim in sims]
        _, pending = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        assert pending, "the batches should still be in flight after the first one returns"
        killed_at = time.monotonic()
        os.kill(pids[victim], signal.SIGKILL)
        results = await asyncio.gather(*pending, return_exceptions=True)
        resolved_within = time.monotonic() - killed_at
        # Every in-flight step resolves within a second. A step that had already
        # passed the victim (its stage-0 work done before the kill) may still finish;
        # every other one fails naming the dead rank's pid.
        assert resolved_within < 1.0
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures, results
        assert all(isinstance(r, ActorDiedError | ExecutorFailedError) for r in failures), results
        assert any(str(pids[victim]) in str(r) for r in failures), results
        with pytest.raises(ExecutorFailedError):
            executor.execute_model(sims[0].schedule())
    deadline = time.monotonic() + 5
    while pids_alive(pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert pids_alive(pids) == []


async def test_an_impossible_layout_fails_at_create_saying_what_to_change(checkpoints):
    path = str(checkpoints["llama"])  # 4 heads, 2 KV heads, 4 layers
    with pytest.raises(ConfigError, match="tensor_parallel_size=3"):
        await Executor.create(model_config(path, "mp", 3, 1))
    with pytest.raises(ConfigError, match="pipeline_parallel_size=8"):
        await Executor.create(model_config(path, "mp", 1, 8))
