"""The runner under async scheduling (one rank, CPU): steps built before the previous
step's tokens reached the host read those tokens from the device rows.

The engine's own scheduler drives a real runner here, ``depth`` steps ahead of
the outputs it has applied, as the engine loop does with ``depth`` steps in
flight. Every sampling feature whose state the runner keeps per request
(penalty histories, min_tokens bans, seeded positions) must give the same
tokens as synchronous steps.
"""

from __future__ import annotations

from collections import deque

import msgspec
import pytest

from actorexec.actors.engine.scheduler import Scheduler
from actorexec.actors.model_runner import ModelRunner
from actorexec.protocol import InvalidRequestError, SamplingParams, SchedulerConfig
from actorexec.protocol.columns import pack_int32
from tests.actors.model_runner.sim_scheduler import make_runner
from tests.actors.reference import ARRIVALS, expected_tokens
from tests.protocol.columns import ints

replace = msgspec.structs.replace
Arrivals = dict[int, list[tuple[str, list[int], SamplingParams]]]


def drive(runner: ModelRunner, arrivals: Arrivals, depth: int, budget: int = 256,
          eos: tuple[int, ...] = ()) -> tuple[dict[str, list[int]], int]:
    """Runs every request to the end with ``depth`` steps scheduled ahead of the applied
    outputs (1: synchronous). Returns each request's tokens and the device tokens sent."""
    assert runner.kv_cache_config is not None
    config = SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=runner.max_num_reqs,
                             async_scheduling=depth > 1)
    sched = Scheduler(config, runner.kv_cache_config.num_blocks, runner.block_size,
                      runner.max_model_len, eos)
    reqs, in_flight, device_tokens = {}, deque(), 0
    for step in range(500):
        for req_id, prompt, params in arrivals.get(step, []):
            reqs[req_id] = sched.add_request(req_id, prompt, params)
        while len(in_flight) < depth and (so := sched.schedule()) is not None:
            device_tokens += sum(ints(so.scheduled_cached_reqs.num_device_tokens))
            in_flight.append((so, runner.execute_model(so)))
        if in_flight:
            sched.update_from_output(*in_flight.popleft())
        elif not sched.has_work() and step > max(arrivals):
            break
    assert not sched.has_work()
    return {r: req.output_token_ids for r, req in reqs.items()}, device_tokens


def greedy_arrivals() -> Arrivals:
    return {step: [(r, p, SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True))
                   for r, p, n in reqs] for step, reqs in ARRIVALS.items()}


@pytest.mark.parametrize("budget", [256, 5], ids=["whole-prompts", "chunked"])
def test_async_steps_give_transformers_greedy_tokens(checkpoints, budget):
    path = checkpoints["llama"]
    got, device_tokens = drive(make_runner(path), greedy_arrivals(), depth=2, budget=budget)
    assert got == expected_tokens(str(path))
    assert device_tokens > 10       # most decode inputs came from the device rows


def test_penalties_bans_and_seeded_sampling_match_synchronous_steps(checkpoints):
    """Each of these reads the request's outputs: in async steps some exist only on the
    device (penalty histories come from the device rows, min_tokens counts them)."""
    path = checkpoints["qwen2"]
    prompt = [1, 5, 9, 33, 77, 4]
    params = {
        "penalties": SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True,
                                    repetition_penalty=1.8, presence_penalty=0.7,
                                    frequency_penalty=0.4),
        "min-tokens": SamplingParams(temperature=0.0, max_tokens=10, min_tokens=6,
                                     stop_token_ids=(3, 17, 90)),
        "seeded": SamplingParams(temperature=0.9, top_p=0.9, top_k=40, max_tokens=12,
                                 seed=1234, ignore_eos=True),
        "seeded-penalised": SamplingParams(temperature=1.1, max_tokens=12, seed=7,
                                           repetition_penalty=1.3, ignore_eos=True),
    }
    arrivals = {0: [(name, prompt, p) for name, p in params.items()]}
    sync, _ = drive(make_runner(path), arrivals, depth=1, eos=(2,))
    pipelined, device_tokens = drive(make_runner(path), arrivals, depth=2, eos=(2,))
    assert pipelined == sync and device_tokens > 0
    assert all(len(tokens) >= 6 for tokens in sync.values())


def _decoding_step(runner: ModelRunner):
    """A runner with one request "x" decoding, and the async step that follows its prefill
    (built before the prefill's token reached the host)."""
    assert runner.kv_cache_config is not None
    sched = Scheduler(SchedulerConfig(max_num_seqs=runner.max_num_reqs),
                      runner.kv_cache_config.num_blocks, runner.block_size, runner.max_model_len)
    sched.add_request("x", [1, 5, 9, 33], SamplingParams(temperature=0.0, max_tokens=8))
    prefill = sched.schedule()
    out = runner.execute_model(prefill)
    step = sched.schedule()
    assert ints(step.scheduled_cached_reqs.num_device_tokens) == [1]
    return sched, prefill, out, step


def _cached(step, **changes):
    return replace(step, scheduled_cached_reqs=replace(step.scheduled_cached_reqs, **changes))


BAD_DEVICE_TOKENS = {
    "two device tokens": (dict(num_device_tokens=bytearray(pack_int32([2]))),
                          "at most the one token"),
    "host and device tokens": (dict(num_new_tokens=bytearray(pack_int32([1])),
                                    new_token_ids=bytearray(pack_int32([7]))),
                               "host tokens and a device token"),
    "misaligned list": (dict(num_device_tokens=bytearray(pack_int32([1, 0]))),
                        "differ in length"),
}


@pytest.mark.parametrize("case", list(BAD_DEVICE_TOKENS))
def test_a_bad_device_token_is_refused_and_changes_nothing(checkpoints, case):
    changes, message = BAD_DEVICE_TOKENS[case]
    runner = make_runner(checkpoints["llama"])
    sched, prefill, out, step = _decoding_step(runner)
    state = runner.requests["x"]
    before = (state.num_tokens, state.num_device_tokens, state.has_device_sample)
    with pytest.raises(InvalidRequestError, match=message):
        runner.execute_model(_cached(step, **changes))
    assert (state.num_tokens, state.num_device_tokens, state.has_device_sample) == before
    good = runner.execute_model(step)            # the valid step still runs, and right
    sched.update_from_output(prefill, out)
    sched.update_from_output(step, good)
    assert len(sched.requests["x"].output_token_ids) == 2


def test_a_device_token_is_refused_when_no_sample_is_waiting_for_it(checkpoints):
    chunked = make_runner(checkpoints["llama"])  # a prompt mid-prefill has sampled nothing
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=2, max_num_seqs=8),
                      64, chunked.block_size, chunked.max_model_len)
    sched.add_request("p", [1, 5, 9, 33], SamplingParams(max_tokens=3))
    first = sched.schedule()
    chunked.execute_model(first)
    second = sched.schedule()
    assert ints(second.scheduled_cached_reqs.num_device_tokens) == []
    with pytest.raises(InvalidRequestError, match="sampled none"):
        chunked.execute_model(_cached(second, num_device_tokens=bytearray(pack_int32([1])),
                                      num_new_tokens=bytearray(pack_int32([0])),
                                      new_token_ids=bytearray()))


def test_runners_with_async_scheduling_off_refuse_device_tokens(checkpoints):
    runner = make_runner(checkpoints["llama"])
    _, prefill, _, step = _decoding_step(runner)
    sync = make_runner(checkpoints["llama"], async_scheduling=False)
    sync.execute_model(prefill)
    with pytest.raises(InvalidRequestError, match="needs async scheduling"):
        sync.execute_model(step)
