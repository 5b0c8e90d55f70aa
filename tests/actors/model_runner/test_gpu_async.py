"""Async scheduling on one GPU: steps built before the previous step's tokens reached the
host take them from the device rows, never synchronise the host, and give the tokens of
synchronous steps, with CUDA graphs and eagerly. Marked ``gpu``; skipped without CUDA."""

from __future__ import annotations

from collections import deque

import pytest
import torch

from actorexec.actors.engine.scheduler import Scheduler
from actorexec.actors.model_runner import ModelRunner
from actorexec.protocol import SamplingParams, SchedulerConfig
from tests.actors.model_runner.test_gpu_runner import cuda_runner
from tests.protocol.columns import ints

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

JOBS = {
    "greedy": ([1, 5, 9, 33, 77, 4, 12, 90, 3, 11, 64], SamplingParams(
        temperature=0.0, max_tokens=14, ignore_eos=True)),
    "seeded": ([1, 7, 8], SamplingParams(temperature=0.8, top_p=0.9, top_k=20, min_p=0.01,
                                         seed=7, max_tokens=12, ignore_eos=True)),
    "penalised": ([1, 2, 3, 2], SamplingParams(temperature=0.0, repetition_penalty=1.4,
                                               presence_penalty=0.5, min_tokens=3,
                                               max_tokens=10, stop_token_ids=(5,))),
    "long": (list(range(1, 40)), SamplingParams(temperature=0.0, max_tokens=9,
                                                ignore_eos=True)),
}


def drive(runner: ModelRunner, depth: int) -> tuple[dict[str, list[int]], int]:
    """Every job to the end with ``depth`` steps queued ahead of the applied outputs; each
    step is queued with host synchronisation forbidden."""
    assert runner.kv_cache_config is not None
    config = SchedulerConfig(max_num_batched_tokens=16, max_num_seqs=runner.max_num_reqs,
                             async_scheduling=depth > 1)
    sched = Scheduler(config, runner.kv_cache_config.num_blocks, runner.block_size,
                      runner.max_model_len, (2,))
    reqs = {r: sched.add_request(r, p, params) for r, (p, params) in JOBS.items()}
    in_flight: deque = deque()
    device_tokens = 0
    while sched.has_work() or in_flight:
        while len(in_flight) < depth and (so := sched.schedule()) is not None:
            device_tokens += sum(ints(so.scheduled_cached_reqs.num_device_tokens))
            torch.cuda.set_sync_debug_mode("error")
            try:
                pending = runner.execute_model_async(so)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            assert pending is not None
            in_flight.append((so, pending))
        so, pending = in_flight.popleft()
        sched.update_from_output(so, pending.result())
    return {r: req.output_token_ids for r, req in reqs.items()}, device_tokens


@pytest.mark.parametrize("eager", [False, True], ids=["graphs", "eager"])
def test_async_steps_never_sync_and_give_the_synchronous_tokens(checkpoints, eager):
    sync, _ = drive(cuda_runner(checkpoints["llama"], eager=eager), depth=1)
    runner = cuda_runner(checkpoints["llama"], eager=eager)
    pipelined, device_tokens = drive(runner, depth=2)
    assert pipelined == sync and device_tokens > 10
    if not eager:
        assert runner.graphs is not None and runner.graphs.replays > 0
