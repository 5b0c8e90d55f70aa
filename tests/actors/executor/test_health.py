"""Busy is not hung: the health probe answers from the worker's loop during a step, and a
step past ``step_timeout_s`` fails the executor with an error naming the rank and step."""

from __future__ import annotations

import asyncio
import time

import pytest

from actorexec.actors.executor import Executor
from actorexec.actors.worker import WorkerHealth
from actorexec.protocol import ConfigError, ExecutorFailedError, ParallelConfig
from actorexec.runtime import ActorFatalError

from .test_executor import BACKENDS, MP, make_config, step


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.timeout(60)
async def test_check_health_answers_during_a_long_call_and_says_what_runs(backend):
    async with await Executor.create(make_config(backend)) as ex:
        await ex.execute_model(step(1))
        busy = ex.collective_rpc("slow", (2.0,))
        await asyncio.sleep(0.5)
        start = time.monotonic()
        [health] = await ex.check_health(timeout=1.5)
        assert time.monotonic() - start < 1.0 and not busy.done()
        assert isinstance(health, WorkerHealth)
        assert health.rank == 0 and health.busy_method == "slow"
        assert 0.3 < health.busy_for_s < 2.0
        assert health.steps_done == 1
        await busy
        [idle] = await ex.check_health()
        assert idle.busy_method is None and idle.busy_for_s == 0.0 and not ex.is_failed


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.timeout(60)
async def test_a_step_past_step_timeout_s_fails_the_executor_naming_rank_and_step(
        backend, monkeypatch):
    monkeypatch.setenv("ACTOREXEC_TEST_STEP_SLEEP_S", "4")  # step 13 hangs for 4 s
    async with await Executor.create(make_config(backend, step_timeout_s=0.5)) as ex:
        fired: list[int] = []
        ex.register_failure_callback(lambda: fired.append(1))
        assert (await ex.execute_model(step(12))).step_id == 12  # quick steps are fine
        start = time.monotonic()
        with pytest.raises(ActorFatalError, match="rank 0: step 13"):
            await ex.execute_model(step(13))
        assert time.monotonic() - start < 2.0  # the limit plus at most a check interval
        assert ex.is_failed and fired == [1]
        assert "step 13" in str(ex.failure) and "step_timeout_s=0.5" in str(ex.failure)
        with pytest.raises(ExecutorFailedError):
            ex.execute_model(step(14))


@pytest.mark.parametrize("backend", MP)
@pytest.mark.timeout(60)
async def test_steps_may_reply_later_while_the_worker_takes_the_next_step(backend, monkeypatch):
    monkeypatch.setenv("ACTOREXEC_TEST_REPLY_LATER_S", "0.5")  # each output 0.5 s "in flight"
    async with await Executor.create(make_config(backend, tp=2)) as ex:
        start = time.monotonic()
        outs = await asyncio.gather(*(ex.execute_model(step(i)) for i in range(6)))
        assert [o.step_id for o in outs] == list(range(6))
        assert time.monotonic() - start < 2.0  # 3.0 s if each waited for the one before
        healths = await ex.check_health()
        assert [h.steps_done for h in healths] == [6, 6]


def test_step_timeout_s_is_positive_or_none():
    assert ParallelConfig().step_timeout_s == 300.0
    assert ParallelConfig(step_timeout_s=None).step_timeout_s is None
    for bad in (0, -1.0, "5"):
        with pytest.raises(ConfigError, match="step_timeout_s"):
            ParallelConfig(step_timeout_s=bad)
