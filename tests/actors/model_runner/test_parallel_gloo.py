"""TP=2 and PP=2 on gloo (2 spawned processes) give the single-rank greedy tokens."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from actorexec.actors.distributed import init_distributed
from actorexec.actors.model_runner import ModelRunner
from actorexec.protocol import (
    CacheConfig,
    Config,
    ModelConfig,
    ParallelConfig,
    SchedulerConfig,
    make_kv_cache_configs,
)
from tests.actors.model_runner.sim_scheduler import SimScheduler, make_runner

ARRIVALS = {0: [("a", [1, 5, 9, 33, 77, 4, 12], 5), ("b", [1, 7], 6)],
            2: [("c", [1, 40, 41, 42], 4)]}


def _rank(rank: int, path: str, tp: int, pp: int, port: int, queue) -> None:
    torch.set_num_threads(1)
    config = Config(model=ModelConfig(model=path),
                    cache=CacheConfig(block_size=4, num_blocks_override=64),
                    parallel=ParallelConfig(tensor_parallel_size=tp, pipeline_parallel_size=pp,
                                            distributed_executor_backend="mp"),
                    scheduler=SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8))
    ctx = init_distributed(config, rank, f"tcp://127.0.0.1:{port}", torch.device("cpu"))
    runner = ModelRunner(config, torch.device("cpu"), ctx)
    runner.load_model()
    (kv,) = make_kv_cache_configs([runner.get_kv_cache_spec()], [1 << 20], 64)
    runner.initialize_kv_cache(kv)
    runner.compile_or_warm_up_model()
    # Every rank plays the same scheduler; the output rank's tokens are broadcast so
    # the others build the same next SchedulerOutput (the engine's role).
    sim = SimScheduler(runner, token_budget=5)
    step = 0
    while sim.running or step <= max(ARRIVALS):
        for req_id, prompt, n in ARRIVALS.get(step, []):
            sim.add(req_id, prompt, max_tokens=n)
        step += 1
        if not sim.running:
            continue
        so = sim.schedule()
        out = [runner.execute_model(so)]
        torch.distributed.broadcast_object_list(out, src=tp * pp - tp)
        sim.update(so, out[0])
    if ctx.is_output_rank:
        queue.put({r.req_id: r.output for r in sim.done.values()})
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_two_ranks_match_single_rank(checkpoints, tp, pp):
    path = str(checkpoints["qwen3"])
    expected = SimScheduler(make_runner(path), token_budget=5).run(ARRIVALS)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, path, tp, pp, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        got = queue.get(timeout=120)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert got == expected
