"""Async scheduling in the scheduler: a request's next step is sent before its tokens come
back, taking in its last sampled token as a device token.

``DeviceMirror`` plays the runners: it reads and applies every step with the
runner's own step reader and keeps each request's token row as the device
does: a sampled token is written into the row at once, and a device token is
read from there. Its "model" samples a pure function of the sequence, so
tokens must equal those of the synchronous scheduler whatever overlaps.
"""

from __future__ import annotations

import random

import pytest
import torch

from actorexec.actors.engine.request import FinishReason
from actorexec.actors.engine.scheduler import Scheduler
from actorexec.actors.model_runner.request_state import CachedRequestState
from actorexec.actors.model_runner.step_plan import RunnerLimits
from actorexec.actors.model_runner.step_reader import apply_step, read_step
from actorexec.protocol import ModelRunnerOutput, SamplingParams, SchedulerConfig, SchedulerOutput
from tests.actors.engine.test_scheduler import EOS, VOCAB, greedy, next_token, scheduled, solo
from tests.protocol.columns import ints


class DeviceMirror:
    """The runners as the scheduler sees them, with device-side token rows."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.states: dict[str, CachedRequestState] = {}
        self.slots: list[CachedRequestState | None] = [None] * sched.config.max_num_seqs
        self.dropped: dict[int, list[str]] = {}  # step id -> the ids it told runners to drop
        self.rows: dict[str, list[int]] = {}   # the device token table, one list per request
        self.limits = RunnerLimits(
            vocab_size=VOCAB, num_blocks=sched.pool.num_blocks, block_size=sched.pool.block_size,
            max_model_len=sched.max_model_len, max_num_reqs=sched.config.max_num_seqs,
            max_num_tokens=sched.config.max_num_batched_tokens, accepts_device_tokens=True)
        self.device_tokens_read = 0

    def run(self, so: SchedulerOutput) -> ModelRunnerOutput:
        plan = read_step(so, self.states, self.slots, self.limits)  # raises as a runner would
        self.dropped[so.step_id] = plan.finished_req_ids
        for req_id in plan.finished_req_ids:
            self.rows.pop(req_id, None)
        for rec in plan.requests:
            if rec.is_new:
                self.rows[rec.req_id] = list(rec.new_token_ids)
            else:
                before = self.states[rec.req_id].num_tokens
                row = self.rows[rec.req_id]
                if rec.num_device_tokens:  # read from the row: the sample written there
                    assert len(row) == before + 1
                    self.device_tokens_read += 1
                else:
                    row[before:] = rec.new_token_ids
        apply_step(plan, self.states, self.slots, torch.device("cpu"))
        sampled = []
        for rec in plan.requests:
            row = self.rows[rec.req_id]
            assert len(row) == self.states[rec.req_id].num_tokens
            req = self.sched.requests.get(rec.req_id)
            if req is not None and not req.is_finished:   # the host knows a prefix of the row
                assert row[:req.num_tokens] == req.all_token_ids
            if rec.samples:
                token = next_token(row[:rec.end])
                row.append(token)  # written into the device row right after sampling
                sampled.append([token])
            else:
                sampled.append([])
        return ModelRunnerOutput.from_lists(so.step_id, sampled)


def make(num_blocks=64, block_size=4, max_model_len=128, pp=1, **cfg
         ) -> tuple[Scheduler, DeviceMirror]:
    sched = Scheduler(SchedulerConfig(async_scheduling=True, **cfg), num_blocks, block_size,
                      max_model_len, [EOS], pipeline_parallel_size=pp)
    return sched, DeviceMirror(sched)


def run_pipelined(sched: Scheduler, mirror: DeviceMirror, depth: int,
                  max_steps: int = 2000) -> list[SchedulerOutput]:
    """Keeps ``depth`` steps in flight; outputs arrive in step order, as from workers."""
    steps, in_flight = [], []
    while (sched.has_work() or in_flight) and len(steps) < max_steps:
        while len(in_flight) < depth and (so := sched.schedule()) is not None:
            in_flight.append((so, mirror.run(so)))   # workers run steps in submission order
            steps.append(so)
        assert in_flight, "scheduler stalled with work left"
        so, out = in_flight.pop(0)
        sched.update_from_output(so, out)
    assert not sched.has_work()
    return steps


def test_the_next_decode_step_goes_out_before_the_output_with_a_device_token():
    sched, mirror = make()
    a = sched.add_request("a", [5, 6, 7], greedy(4))
    s0 = sched.schedule()
    out0 = mirror.run(s0)
    s1 = sched.schedule()                       # s0's output has not arrived
    c = s1.scheduled_cached_reqs
    assert ints(c.slots) == [a.slot] and ints(c.num_device_tokens) == [1]
    assert c.new_token_lists() == [[]]
    assert ints(c.num_computed_tokens) == [3] and scheduled(sched, s1) == {"a": 1}
    assert sched.schedule() is None             # two steps in flight: the most for a request
    out1 = mirror.run(s1)
    sched.update_from_output(s0, out0)
    assert a.output_token_ids == out0.sampled_lists()[0] and a.num_output_placeholders == 1
    s2 = sched.schedule()                       # again its token from s1 is on the device
    assert ints(s2.scheduled_cached_reqs.num_device_tokens) == [1]
    assert ints(s2.scheduled_cached_reqs.num_computed_tokens) == [4]
    sched.update_from_output(s1, out1)
    sched.update_from_output(s2, mirror.run(s2))
    run_pipelined(sched, mirror, 2)
    assert a.output_token_ids == solo([5, 6, 7], greedy(4))


def test_no_step_is_sent_whose_sample_max_tokens_would_discard():
    sched, mirror = make()
    req = sched.add_request("a", [3, 4], greedy(5))
    steps = run_pipelined(sched, mirror, 2)
    assert len(steps) == 5 and len(req.output_token_ids) == 5   # one sampling step per token
    assert mirror.device_tokens_read == 4 and req.finish_reason is FinishReason.LENGTH
    assert sched.pool.num_free == sched.pool.num_blocks


def test_a_stop_token_discards_the_one_overshoot_token_and_the_runner_drops_the_request():
    sched, mirror = make()
    first = next_token([3, 3])
    sched.eos_token_ids = frozenset({first})     # the first token sampled ends it
    req = sched.add_request("a", [3, 3], SamplingParams(temperature=0, max_tokens=10))
    s0 = sched.schedule()
    out0 = mirror.run(s0)
    s1 = sched.schedule()                        # in flight when the stop is seen
    out1 = mirror.run(s1)
    updates = sched.update_from_output(s0, out0)
    assert updates == [(req, [first], [])] and req.finish_reason is FinishReason.STOP
    assert sched.pool.num_free == sched.pool.num_blocks     # blocks freed at the stop
    assert sched.update_from_output(s1, out1) == []          # the overshoot is discarded
    assert sched.num_discarded_tokens == 1
    assert req.output_token_ids == [first] and "a" not in sched.requests
    sched.add_request("b", [4, 4], greedy(1))
    s2 = sched.schedule()
    mirror.run(s2)
    assert mirror.dropped[s2.step_id] == ["a"]               # the runners drop it
    # ... before they add b, which takes a's freed slot in that same step
    assert s2.finished_slots == [s2.scheduled_new_reqs[0].slot] == [0]


def test_a_prompt_split_in_chunks_has_its_chunks_in_flight_back_to_back():
    sched, mirror = make(max_num_batched_tokens=4)
    req = sched.add_request("a", list(range(3, 13)), greedy(3))
    s0, s1 = sched.schedule(), sched.schedule()
    assert scheduled(sched, s0) == {"a": 4} and scheduled(sched, s1) == {"a": 4}
    assert ints(s1.scheduled_cached_reqs.num_computed_tokens) == [4]
    assert sched.schedule() is None
    for so in (s0, s1):
        sched.update_from_output(so, mirror.run(so))
    run_pipelined(sched, mirror, 2)
    assert req.output_token_ids == solo(list(range(3, 13)), greedy(3))


def test_with_two_stages_requests_split_into_two_steps_and_return_two_steps_later():
    sched, mirror = make(pp=2)
    for i in range(4):
        sched.add_request(f"r{i}", [3 + i] * 3, greedy(6))
    s0, s1, s2, s3 = (sched.schedule() for _ in range(4))
    assert set(scheduled(sched, s0)) == {"r0", "r1"}
    assert set(scheduled(sched, s1)) == {"r2", "r3"}
    assert set(scheduled(sched, s2)) == {"r0", "r1"}     # s0's requests, device tokens
    assert set(scheduled(sched, s3)) == {"r2", "r3"}
    assert ints(s2.scheduled_cached_reqs.num_device_tokens) == [1, 1]
    assert sched.schedule() is None              # each request is in two steps already
    outs = [mirror.run(so) for so in (s0, s1, s2, s3)]
    sched.update_from_output(s0, outs[0])
    s4 = sched.schedule()                        # s0 is back: its requests go again
    assert set(scheduled(sched, s4)) == {"r0", "r1"}
    outs.append(mirror.run(s4))
    for so, out in zip((s1, s2, s3, s4), outs[1:], strict=True):
        sched.update_from_output(so, out)
    run_pipelined(sched, mirror, 3)
    for i in range(4):
        assert sched_tokens(sched, f"r{i}") is None  # all finished and released
    assert sched.pool.num_free == sched.pool.num_blocks


def sched_tokens(sched: Scheduler, req_id: str) -> list[int] | None:
    req = sched.requests.get(req_id)
    return None if req is None else req.output_token_ids


@pytest.mark.parametrize("seed", range(8))
def test_random_pipelined_workloads_with_stops_aborts_and_preemption_match_sync(seed):
    rng = random.Random(seed)
    pp = rng.choice([1, 1, 2, 3])
    chunked = rng.random() < 0.7
    sched, mirror = make(num_blocks=rng.randint(10, 14), block_size=rng.choice([2, 4]),
                         max_num_batched_tokens=rng.choice([8, 16, 64]) if chunked else 24,
                         max_num_seqs=rng.randint(2, 6), enable_chunked_prefill=chunked, pp=pp)
    stop_at = {next_token([3 + k]) for k in range(0, 60, 7)}  # some first tokens are EOS
    sched.eos_token_ids = frozenset(stop_at)
    jobs = {f"r{i}": ([3 + rng.randrange(60) for _ in range(rng.randint(1, 8))],
                      SamplingParams(temperature=0.0, max_tokens=rng.randint(1, 12),
                                     ignore_eos=rng.random() < 0.5)) for i in range(20)}
    reqs, aborted, in_flight = {}, set(), []
    pending = list(jobs.items())
    for _ in range(4000):
        if pending and rng.random() < 0.3:
            rid, (ids, params) = pending.pop(0)
            reqs[rid] = sched.add_request(rid, ids, params)
        if reqs and rng.random() < 0.03:
            victim = rng.choice(list(reqs))
            if sched.abort_request(victim) is not None:
                aborted.add(victim)
        while len(in_flight) < pp + 1 and (so := sched.schedule()) is not None:
            in_flight.append((so, mirror.run(so)))
        if in_flight and rng.random() < 0.7:
            so, out = in_flight.pop(0)               # in step order, as workers reply
            sched.update_from_output(so, out)
        if not pending and not in_flight and not sched.has_work():
            break
    assert not sched.has_work() and not in_flight
    assert sched.pool.num_free == sched.pool.num_blocks
    assert not sched.requests                          # nothing left behind
    for rid, req in reqs.items():
        if rid not in aborted:
            want = solo_with_eos(*jobs[rid], stop_at)
            assert req.output_token_ids == want, rid


def solo_with_eos(prompt: list[int], params: SamplingParams, eos: set[int]) -> list[int]:
    sched = Scheduler(SchedulerConfig(async_scheduling=False), 64, 4, 128, eos)
    mirror = DeviceMirror(sched)
    req = sched.add_request("solo", prompt, params)
    while sched.has_work():
        so = sched.schedule()
        sched.update_from_output(so, mirror.run(so))
    return req.output_token_ids
