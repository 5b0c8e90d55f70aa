"""Real models under Ray: greedy tokens through the engine, ranks over two nodes.

TP=2, PP=2 and TP=2 x PP=2 (tiny random Llama, gloo on the CPU, meeting at a
TCP store bound to rank 0's node IP) give exactly the single-rank engine's
tokens. The layouts are checked too: with PACK, each TP group stays on one
node and the two stages take one node each. And ``actorexec generate
--backend ray`` runs on the same cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys

import msgspec
import pytest

from actorexec.actors.engine import AsyncEngine
from actorexec.protocol import Config, SamplingParams
from tests.actors.reference import ARRIVALS
from tests.actors.test_executor_runs_models import model_config

from .ray_cluster import start_cluster, tcp_listeners, wait_nothing_left

pytestmark = pytest.mark.slow

REQUESTS = [(rid, prompt, n) for reqs in ARRIVALS.values() for rid, prompt, n in reqs]


@pytest.fixture(scope="module")
def cluster():
    yield from start_cluster()


def with_strategy(config: Config, strategy: str) -> Config:
    return config.replace(parallel=msgspec.structs.replace(config.parallel,
                                                           placement_strategy=strategy))


async def engine_tokens(config: Config, check=None) -> dict[str, list[int]]:
    """Every request added at once, greedy; the tokens each got (and the executor's
    placements, through ``check(executor)`` while it runs)."""
    async with await AsyncEngine.create(config) as engine:
        if check is not None:
            check(engine.executor)
        streams = {rid: engine.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=n,
                                                                  ignore_eos=True), rid)
                   for rid, prompt, n in REQUESTS}
        got = {}
        for rid, stream in streams.items():
            async with stream:
                outs = [out async for out in stream]
            got[rid] = outs[-1].token_ids
    return got


@pytest.fixture(scope="module")
def llama(checkpoints) -> str:
    return str(checkpoints["llama"])


@pytest.fixture(scope="module")
def single_rank_tokens(llama) -> dict[str, list[int]]:
    from actorexec.runtime import run

    return run(engine_tokens(model_config(llama, "uni")))


def tp_groups_on_one_node_and_stages_apart(executor) -> None:
    by_stage: dict[int, set[str]] = {}
    for place in executor.placements:
        by_stage.setdefault(place.stage, set()).add(place.node_id)
    assert all(len(nodes) == 1 for nodes in by_stage.values()), executor.placements
    assert len(set.union(*by_stage.values())) == 2, executor.placements


def spread_over_both_nodes(executor) -> None:
    assert len({p.node_id for p in executor.placements}) == 2, executor.placements
    # Rank 0 shares the driver's node: on the rings (no worker socket); rank 1 on tcp.
    rank0, rank1 = executor.placements
    assert (rank0.transport, rank1.transport) == ("shm", "tcp"), executor.placements
    # torch.distributed's store (rank 0) and rank 1's worker socket: on their node IP only.
    for place in executor.placements:
        listeners = tcp_listeners(place.pid)
        assert listeners and all(ip == place.node_ip for ip, _ in listeners), listeners


@pytest.mark.timeout(300)
@pytest.mark.parametrize("tp,pp,strategy,check", [
    (2, 1, "STRICT_SPREAD", spread_over_both_nodes),
    (1, 2, "STRICT_SPREAD", spread_over_both_nodes),
    (2, 2, "PACK", tp_groups_on_one_node_and_stages_apart),
], ids=["tp2", "pp2", "tp2xpp2"])
async def test_greedy_tokens_over_two_nodes_equal_the_single_rank_tokens(
        cluster, llama, single_rank_tokens, tp, pp, strategy, check):
    placed: list[int] = []

    def record(executor) -> None:
        check(executor)
        placed.extend(p.pid for p in executor.placements)

    config = with_strategy(model_config(llama, "ray", tp, pp), strategy)
    assert await engine_tokens(config, record) == single_rank_tokens
    await wait_nothing_left(placed)


@pytest.mark.timeout(300)
def test_actorexec_generate_runs_on_the_ray_backend(cluster, llama, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "ACTOREXEC_CACHE": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "actorexec", "generate", "--backend", "ray", "--pp", "2",
         "--max-tokens", "4", "--ignore-eos", "Hello"],
        capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 tokens for 1 prompt" in result.stdout, result.stdout
