"""Scheduler: diffs the runner can replay, budgets, preemption, stops, rejection.

``RunnerMirror`` reads and applies each SchedulerOutput with the runner's own
step reader (so every step must pass the runner's checks) and compares the
result with the scheduler's own truth; its "model" samples a token that is a
pure function of the sequence, so results must not depend on batching.
"""

from __future__ import annotations

import pytest
import torch

from actorexec.actors.engine.request import FinishReason
from actorexec.actors.engine.scheduler import Scheduler
from actorexec.actors.model_runner.request_state import CachedRequestState
from actorexec.actors.model_runner.step_plan import RunnerLimits
from actorexec.actors.model_runner.step_reader import apply_step, read_step
from actorexec.protocol import (
    InvalidRequestError,
    ModelRunnerOutput,
    ProtocolError,
    SamplingParams,
    SchedulerConfig,
    SchedulerOutput,
)
from tests.protocol.columns import ints

EOS = 2
VOCAB = 1000


def next_token(tokens: list[int]) -> int:
    return 10 + (sum(t * (i + 1) for i, t in enumerate(tokens)) % 50)


class RunnerMirror:
    """Replays each step through the runner's own step reader (validate, then apply)."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.states: dict[str, CachedRequestState] = {}
        self.slots: list[CachedRequestState | None] = [None] * sched.config.max_num_seqs
        self.dropped: dict[int, list[str]] = {}  # step id -> the ids it told runners to drop
        self.limits = RunnerLimits(
            vocab_size=VOCAB, num_blocks=sched.pool.num_blocks, block_size=sched.pool.block_size,
            max_model_len=sched.max_model_len, max_num_reqs=sched.config.max_num_seqs,
            max_num_tokens=sched.config.max_num_batched_tokens)
        self.step_ids: list[int] = []

    def run(self, so: SchedulerOutput) -> ModelRunnerOutput:
        self.step_ids.append(so.step_id)
        plan = read_step(so, self.states, self.slots, self.limits)  # raises as a runner would
        self.dropped[so.step_id] = plan.finished_req_ids
        apply_step(plan, self.states, self.slots, torch.device("cpu"))
        sampled = []
        for rec in plan.requests:
            state = self.states[rec.req_id]
            tokens = state.prompt_token_ids + state.output_token_ids
            req = self.sched.requests.get(rec.req_id)
            if req is not None and not req.is_finished:
                assert tokens == req.all_token_ids
                assert state.block_ids == req.block_ids
            sampled.append([next_token(tokens)] if rec.samples else [])
        return ModelRunnerOutput.from_lists(so.step_id, sampled)


def scheduled(sched: Scheduler, so: SchedulerOutput) -> dict[str, int]:
    """Request id -> tokens it runs in ``so``, a step in flight (steps name requests by slot)."""
    counts = so.num_scheduled_tokens
    return {r.req_id: counts[slot] for r, slot in zip(sched.batch(so.step_id), so.slots,
                                                       strict=True)}


def make(num_blocks=64, block_size=4, max_model_len=128, **cfg) -> tuple[Scheduler, RunnerMirror]:
    """A scheduler (synchronous unless ``async_scheduling=True``: test_async_scheduler.py)."""
    cfg.setdefault("async_scheduling", False)
    sched = Scheduler(SchedulerConfig(**cfg), num_blocks, block_size, max_model_len, [EOS])
    return sched, RunnerMirror(sched)


def drain(sched: Scheduler, mirror: RunnerMirror, max_steps: int = 1000) -> list[SchedulerOutput]:
    steps = []
    while sched.has_work() and len(steps) < max_steps:
        so = sched.schedule()
        assert so is not None, "scheduler stalled with work left"
        sched.update_from_output(so, mirror.run(so))
        steps.append(so)
    assert not sched.has_work()
    return steps


def solo(prompt: list[int], params: SamplingParams) -> list[int]:
    sched, mirror = make()
    req = sched.add_request("solo", prompt, params)
    drain(sched, mirror)
    return req.output_token_ids


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)


def test_first_step_sends_request_in_full_then_only_diffs():
    sched, mirror = make(block_size=4)
    sched.add_request("a", [5, 6, 7], greedy(4))
    s0 = sched.schedule()
    assert [r.req_id for r in s0.scheduled_new_reqs] == ["a"]
    assert scheduled(sched, s0) == {"a": 3} and s0.scheduled_new_reqs[0].slot == 0
    sched.update_from_output(s0, mirror.run(s0))
    s1 = sched.schedule()
    c = s1.scheduled_cached_reqs
    assert not s1.scheduled_new_reqs and ints(c.slots) == [0]     # named by its slot
    assert c.new_token_lists() == [[next_token([5, 6, 7])]] and ints(c.num_computed_tokens) == [3]
    assert c.new_block_lists() == [[]]          # 4 tokens still fit the first block
    sched.update_from_output(s1, mirror.run(s1))
    s2 = sched.schedule()
    assert len(s2.scheduled_cached_reqs.new_block_lists()[0]) == 1   # 5th token needs a block
    assert [s.step_id for s in (s0, s1, s2)] == [0, 1, 2]


def test_chunked_prefill_splits_a_long_prompt_by_the_token_budget():
    sched, mirror = make(max_num_batched_tokens=8)
    req = sched.add_request("a", list(range(3, 23)), greedy(2))
    steps = drain(sched, mirror)
    assert [s.num_scheduled_tokens[0] for s in steps] == [8, 8, 4, 1]   # a is in slot 0
    assert req.output_token_ids == solo(list(range(3, 23)), greedy(2))


def test_decodes_come_first_and_waiting_prompts_fill_the_rest_of_the_budget():
    sched, mirror = make(max_num_batched_tokens=6)
    sched.add_request("a", [3, 4, 5], greedy(5))
    s0 = sched.schedule()
    sched.update_from_output(s0, mirror.run(s0))
    sched.add_request("b", list(range(10, 20)), greedy(5))
    s1 = sched.schedule()
    assert scheduled(sched, s1) == {"a": 1, "b": 5}


def test_without_chunked_prefill_a_prompt_waits_for_a_whole_budget():
    sched, mirror = make(max_num_batched_tokens=12, enable_chunked_prefill=False)
    sched.add_request("a", [3] * 6, greedy(3))
    sched.add_request("b", [4] * 8, greedy(3))
    s0 = sched.schedule()
    assert scheduled(sched, s0) == {"a": 6}
    sched.update_from_output(s0, mirror.run(s0))
    assert scheduled(sched, sched.schedule()) == {"a": 1, "b": 8}


def test_max_num_seqs_caps_the_batch():
    sched, _mirror = make(max_num_seqs=2)
    for i in range(4):
        sched.add_request(f"r{i}", [3 + i] * 3, greedy(2))
    assert set(scheduled(sched, sched.schedule())) == {"r0", "r1"}


def test_a_request_in_flight_is_not_scheduled_again_until_its_output_arrives():
    sched, mirror = make()
    sched.add_request("a", [3, 4], greedy(3))
    s0 = sched.schedule()
    assert sched.schedule() is None
    sched.add_request("b", [5, 6], greedy(3))
    s1 = sched.schedule()
    assert set(scheduled(sched, s1)) == {"b"}
    out1 = mirror.run(s1)
    out0 = mirror.run(s0)
    sched.update_from_output(s1, out1)   # outputs may arrive in any order
    sched.update_from_output(s0, out0)
    assert set(scheduled(sched, sched.schedule())) == {"a", "b"}


def test_concurrent_requests_get_the_tokens_they_get_alone():
    sched, mirror = make(num_blocks=40, max_num_batched_tokens=16, max_num_seqs=5)
    prompts = {f"r{i}": [3 + (i * 7 + j) % 40 for j in range(2 + 5 * i)] for i in range(7)}
    reqs = {rid: sched.add_request(rid, p, greedy(3 + 2 * int(rid[1:])))
            for rid, p in prompts.items()}
    drain(sched, mirror)
    for rid, req in reqs.items():
        assert req.output_token_ids == solo(prompts[rid], req.sampling_params), rid
    assert sched.pool.num_free == sched.pool.num_blocks


def test_block_exhaustion_preempts_the_newest_and_it_still_finishes_correctly():
    sched, mirror = make(num_blocks=6, block_size=4)
    a = sched.add_request("a", [3] * 7, greedy(9))   # grows to 15 tokens: 4 blocks
    b = sched.add_request("b", [4] * 7, greedy(9))
    steps = drain(sched, mirror)
    assert b.num_preemptions >= 1 and a.num_preemptions == 0
    dropped = [s for s in steps if "b" in mirror.dropped[s.step_id]]
    readded = [s for s in steps if any(r.req_id == "b" for r in s.scheduled_new_reqs)]
    assert dropped and len(readded) == 2
    assert readded[1].scheduled_new_reqs[0].output_token_ids   # outputs so far travel back
    assert readded[1].step_id > dropped[0].step_id
    assert a.output_token_ids == solo([3] * 7, greedy(9))
    assert b.output_token_ids == solo([4] * 7, greedy(9))
    assert sched.pool.num_free == 6


def test_eos_stops_unless_ignored_and_not_before_min_tokens():
    def run(params: SamplingParams) -> tuple[list[int], FinishReason]:
        sched, mirror = make()
        sched.eos_token_ids = frozenset({next_token([3, 3])})   # the first token sampled
        req = sched.add_request("a", [3, 3], params)
        drain(sched, mirror)
        return req.output_token_ids, req.finish_reason

    out, reason = run(SamplingParams(temperature=0, max_tokens=5))
    assert len(out) == 1 and reason is FinishReason.STOP
    out, reason = run(SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert len(out) == 5 and reason is FinishReason.LENGTH
    first = next_token([3, 3])
    out, _ = run(SamplingParams(temperature=0, max_tokens=5, min_tokens=2, ignore_eos=True,
                                stop_token_ids=(first,)))
    assert len(out) >= 2


def test_stop_token_ids_and_max_model_len_end_a_request():
    sched, mirror = make(max_model_len=10)
    first = next_token([3, 4])
    a = sched.add_request("a", [3, 4], greedy(8, stop_token_ids=(first,)))
    b = sched.add_request("b", [5] * 8, greedy(8))
    drain(sched, mirror)
    assert a.output_token_ids == [first] and a.finish_reason is FinishReason.STOP
    assert b.num_tokens == 10 and b.finish_reason is FinishReason.LENGTH


def test_requests_that_cannot_fit_are_rejected_at_add_and_change_nothing():
    sched, _ = make(num_blocks=4, block_size=4, max_model_len=64)
    with pytest.raises(InvalidRequestError, match="maximum model length 64"):
        sched.add_request("long", [3] * 65, greedy(1))
    with pytest.raises(InvalidRequestError, match="KV cache"):
        sched.add_request("big", [3] * 10, greedy(20))
    with pytest.raises(InvalidRequestError, match="empty"):
        sched.add_request("empty", [], greedy(1))
    assert not sched.has_work() and not sched.requests


def test_abort_frees_blocks_and_tells_the_runner_next_step():
    sched, mirror = make(num_blocks=8)
    sched.add_request("a", [3] * 9, greedy(5))
    sched.add_request("b", [4] * 2, greedy(5))
    s0 = sched.schedule()
    assert sched.pool.num_used == 4
    sched.abort_request("a")                      # while in flight
    assert sched.pool.num_used == 1
    sched.update_from_output(s0, mirror.run(s0))  # a's sampled token is ignored
    s1 = sched.schedule()
    assert set(scheduled(sched, s1)) == {"b"}
    mirror.run(s1)
    assert mirror.dropped[s1.step_id] == ["a"]
    assert "a" not in sched.requests


@pytest.mark.parametrize("seed", range(6))
def test_random_workloads_with_two_steps_in_flight_and_aborts_stay_consistent(seed):
    import random

    rng = random.Random(seed)
    chunked = rng.random() < 0.7        # without chunking a whole request must fit the budget
    sched, mirror = make(num_blocks=rng.randint(10, 14), block_size=rng.choice([2, 4]),
                         max_num_batched_tokens=rng.choice([8, 16, 64]) if chunked else 24,
                         max_num_seqs=rng.randint(2, 6), enable_chunked_prefill=chunked)
    jobs = {f"r{i}": ([3 + rng.randrange(60) for _ in range(rng.randint(1, 8))],
                      greedy(rng.randint(1, 12))) for i in range(20)}
    reqs, aborted, in_flight = {}, set(), []
    pending = list(jobs.items())
    for _ in range(2000):
        if pending and rng.random() < 0.3:
            rid, (ids, params) = pending.pop(0)
            reqs[rid] = sched.add_request(rid, ids, params)
        if reqs and rng.random() < 0.03:
            victim = rng.choice(list(reqs))
            if sched.abort_request(victim) is not None:
                aborted.add(victim)
        while len(in_flight) < 2 and (so := sched.schedule()) is not None:
            in_flight.append((so, mirror.run(so)))   # workers run steps in submission order
        if in_flight:
            so, out = in_flight.pop(rng.randrange(len(in_flight)))   # outputs in any order
            sched.update_from_output(so, out)
        if not pending and not in_flight and not sched.has_work():
            break
    assert not sched.has_work() and not in_flight
    assert sched.pool.num_free == sched.pool.num_blocks
    for rid, req in reqs.items():
        if rid not in aborted:
            assert req.output_token_ids == solo(*jobs[rid]), rid


def test_an_output_that_does_not_answer_its_step_is_a_protocol_error_and_changes_nothing():
    sched, mirror = make()
    a = sched.add_request("a", [3, 4], greedy(3))
    b = sched.add_request("b", [5, 6], greedy(3))
    s0 = sched.schedule()
    out = mirror.run(s0)
    short = ModelRunnerOutput.from_lists(s0.step_id, out.sampled_lists()[:1])  # b's row lost
    other = ModelRunnerOutput.from_lists(s0.step_id + 1, out.sampled_lists())
    for bad in (short, other):
        with pytest.raises(ProtocolError, match="does not answer step 0"):
            sched.update_from_output(s0, bad)
    assert a.output_token_ids == b.output_token_ids == [] and a.in_flight and b.in_flight
    updates = sched.update_from_output(s0, out)       # the real one still applies
    assert [(r.req_id, new) for r, new, _ in updates] == [
        ("a", [next_token([3, 4])]), ("b", [next_token([5, 6])])]
    with pytest.raises(ProtocolError, match="not in flight"):
        sched.update_from_output(s0, out)             # a step is answered once


def test_slots_are_reused_once_freed_and_never_held_twice():
    sched, mirror = make(max_num_seqs=3)
    for i in range(12):
        sched.add_request(f"r{i}", [3 + i, 4], greedy(1 + i % 4))
    held: dict[int, str] = {}
    added = 0
    while sched.has_work():
        so = sched.schedule()
        for slot in so.finished_slots:
            held.pop(slot)
        for new in so.scheduled_new_reqs:
            assert new.slot not in held and 0 <= new.slot < 3
            held[new.slot] = new.req_id
            added += 1
        sched.update_from_output(so, mirror.run(so))   # the runner's own checks pass too
    assert added == 12 and not sched.requests


def test_two_requests_that_cannot_both_fit_finish_with_two_steps_in_flight():
    """Regression: the oldest request preempted itself whenever the younger one was in
    flight, and the younger came back in the step that dropped it: with two steps in
    flight (PP=2) the two preempted each other forever, neither finishing its prompt."""
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=8, max_num_seqs=3,
                                      async_scheduling=False), 6, 4, 64, [EOS],
                      pipeline_parallel_size=2)
    mirror = RunnerMirror(sched)
    # a grows to 19 tokens (5 of the 6 blocks), b to 18: they cannot both fit.
    jobs = {"a": ([3 + j for j in range(9)], greedy(10)), "b": ([5 + j for j in range(14)],
                                                                 greedy(4))}
    reqs = {rid: sched.add_request(rid, *job) for rid, job in jobs.items()}
    in_flight: list[tuple[SchedulerOutput, ModelRunnerOutput]] = []
    for _ in range(400):
        while len(in_flight) < 2 and (so := sched.schedule()) is not None:
            in_flight.append((so, mirror.run(so)))
        if not in_flight:
            break
        sched.update_from_output(*in_flight.pop(0))
    assert not sched.has_work(), [(r.req_id, r.num_preemptions) for r in reqs.values()]
    for rid, req in reqs.items():
        assert req.output_token_ids == solo(*jobs[rid]), rid
    assert reqs["a"].num_preemptions == 0 and sched.num_preemptions <= 10  # it was ~300
