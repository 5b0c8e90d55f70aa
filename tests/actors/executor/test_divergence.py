"""Ranks never silently disagree: a call that ran on some ranks and not on others fails
the executor at once, saying the ranks diverged (never a hang on the next step)."""

from __future__ import annotations

import asyncio
import time

import pytest

from actorexec.actors.executor import Executor
from actorexec.protocol import ExecutorFailedError, InvalidRequestError

from .test_executor import MP, make_config


@pytest.mark.parametrize("backend", MP)
@pytest.mark.timeout(60)
async def test_a_call_one_rank_runs_and_another_reaches_after_its_deadline_fails_the_executor(
        backend):
    async with await Executor.create(make_config(backend, tp=2)) as ex:
        fired: list[int] = []
        ex.register_failure_callback(lambda: fired.append(1))
        behind = ex.collective_rpc("sleep_on_rank", (1, 1.5))  # rank 1 falls 1.5 s behind
        start = time.monotonic()
        # Rank 0 runs this at once and is still in it at the deadline (as if waiting in an
        # all-reduce for rank 1); rank 1 reaches it after the deadline and refuses it.
        with pytest.raises(TimeoutError):
            await ex.collective_rpc("sleep_on_rank", (0, 0.8), timeout=0.3)
        assert ex.is_failed and fired == [1]
        assert time.monotonic() - start < 1.0
        assert "diverged" in str(ex.failure)
        with pytest.raises(ExecutorFailedError, match="diverged"):
            ex.collective_rpc("echo", (1,))  # at once, not a hang
        with pytest.raises(ExecutorFailedError):
            await behind


@pytest.mark.parametrize("backend", MP)
@pytest.mark.timeout(60)
async def test_a_call_that_fails_on_one_rank_and_succeeds_on_another_fails_the_executor(backend):
    async with await Executor.create(make_config(backend, tp=2)) as ex:
        with pytest.raises(InvalidRequestError, match="rank 1 refuses"):
            await ex.collective_rpc("fail_on_rank", (1,))
        # The caller hears of the first failure at once; the ranks are judged once rank 0's
        # success has arrived too (it may arrive after rank 1's failure).
        deadline = time.monotonic() + 1.0
        while not ex.is_failed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert ex.is_failed and "diverged" in str(ex.failure)
        with pytest.raises(ExecutorFailedError, match=r"succeeded on rank\(s\) \[0\]"):
            ex.collective_rpc("echo", (1,))


@pytest.mark.parametrize("backend", MP)
@pytest.mark.timeout(60)
async def test_a_call_that_fails_on_every_rank_leaves_the_executor_serving(backend):
    async with await Executor.create(make_config(backend, tp=2)) as ex:
        with pytest.raises(ValueError, match="same on all"):
            await ex.collective_rpc("fail", ("same on all",))
        assert not ex.is_failed
        assert await ex.collective_rpc("echo", (2,)) == [2, 2]
