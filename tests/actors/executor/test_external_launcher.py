"""ExecutorWithExternalLauncher: torchrun starts the ranks; each runs its own engine.

``torchrun --nproc-per-node 2 examples/torchrun_tp2.py`` with TP=2 (and PP=2)
gives the single-rank engine's greedy tokens, on rank 0 and, identically, on
rank 1. Outside a launcher, or with a launch that does not match the
parallel sizes, the executor refuses at once, saying what to set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actorexec.actors.engine import AsyncEngine
from actorexec.actors.executor import Executor, ExecutorWithExternalLauncher
from actorexec.protocol import (
    ActorexecError,
    CacheConfig,
    Config,
    ConfigError,
    ExecutorFailedError,
    ModelConfig,
    ParallelConfig,
    SamplingParams,
    SchedulerConfig,
)
from actorexec.runtime import run
from actorexec.runtime.endpoints import free_tcp_port

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "torchrun_tp2.py"
PROMPTS = [[1, 5, 9, 33, 77, 4, 12, 90, 3, 11, 64], [1, 7], [1, 40, 41, 42, 99]]
MAX_TOKENS = 6


def launcher_config(model: str, tp: int = 2, pp: int = 1, backend: str = "external_launcher"):
    # The example's settings, so the single-rank run below schedules the same way.
    return Config(model=ModelConfig(model=model),
                  cache=CacheConfig(block_size=4, num_blocks_override=64),
                  scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64),
                  parallel=ParallelConfig(tensor_parallel_size=tp, pipeline_parallel_size=pp,
                                          distributed_executor_backend=backend))


async def single_rank(model: str) -> dict[str, list[int]]:
    greedy = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    async with await AsyncEngine.create(launcher_config(model, 1, 1, "uni"),
                                        tokenizer=None) as engine:
        got = {}
        for i, prompt in enumerate(PROMPTS):
            outs = [out async for out in engine.generate(prompt, greedy, request_id=str(i))]
            got[str(i)] = outs[-1].token_ids
    return got


@pytest.mark.timeout(300)
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_torchrun_with_two_processes_gives_the_single_rank_tokens_on_every_rank(
        checkpoints, tp, pp):
    model = str(checkpoints["llama"])
    want = run(single_rank(model))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(free_tcp_port()),
         str(EXAMPLE), "--model", model, "--prompts", json.dumps(PROMPTS),
         "--max-tokens", str(MAX_TOKENS), "--tp", str(tp), "--pp", str(pp), "--all-ranks"],
        capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    by_rank = {r: {x["request"]: x["tokens"] for x in lines if x["rank"] == r} for r in (0, 1)}
    assert by_rank[0] == want          # what rank 0 returns to its caller
    assert by_rank[1] == by_rank[0]    # and every other rank took the same steps


def test_outside_a_launcher_it_says_which_variables_are_missing(monkeypatch, checkpoints):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    config = launcher_config(str(checkpoints["llama"]))
    assert Executor.get_class(config) is ExecutorWithExternalLauncher
    with pytest.raises(ConfigError, match=r"RANK, WORLD_SIZE, LOCAL_RANK.*torchrun"):
        ExecutorWithExternalLauncher(config)


def test_a_launch_that_does_not_match_the_parallel_sizes_is_refused(monkeypatch, checkpoints):
    env = {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29500"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=4.*= 2"):
        ExecutorWithExternalLauncher(launcher_config(str(checkpoints["llama"])))
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="integers"):
        ExecutorWithExternalLauncher(launcher_config(str(checkpoints["llama"])))


@pytest.mark.timeout(60)
async def test_a_failed_rank_refuses_to_restart_alone(monkeypatch):
    # One rank (WORLD_SIZE=1, no process group needed), the test worker; step 13 hangs past
    # the watchdog, which fails the executor for real. The others of a real launch could
    # not follow a restart of this rank alone: a new executor here is refused, saying so.
    from actorexec.actors.executor import external_launcher

    from .test_executor import WORKER, step

    monkeypatch.setattr(external_launcher, "_failed_in_this_process", [])
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
                        "ACTOREXEC_TEST_STEP_SLEEP_S": "3"}.items():
        monkeypatch.setenv(name, value)
    config = Config(model=ModelConfig(model="unused"), parallel=ParallelConfig(
        distributed_executor_backend="external_launcher", worker_cls=WORKER,
        step_timeout_s=0.5))
    async with await Executor.create(config) as ex:
        await ex.initialize_kv_cache()
        assert (await ex.execute_model(step(1))).step_id == 1
        with pytest.raises(ActorexecError, match="step 13"):
            await ex.execute_model(step(13))
        assert ex.is_failed
    with pytest.raises(ExecutorFailedError, match="cannot restart alone"):
        await Executor.create(config)
