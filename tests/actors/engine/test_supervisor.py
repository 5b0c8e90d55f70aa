"""The restart machinery without processes: the budget, blame by repetition, and the
scheduler putting every request back for recompute on a runner that knows nothing."""

from __future__ import annotations

import pytest

from actorexec.actors.engine.request import FinishReason, RequestStatus
from actorexec.actors.engine.supervisor import FailureAttribution, RestartPolicy
from actorexec.protocol import RestartConfig
from tests.actors.engine.test_scheduler import RunnerMirror, drain, greedy, make, solo


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_allows_max_restarts_within_any_window_and_backs_off_doubling():
    clock = Clock()
    policy = RestartPolicy(RestartConfig(max_restarts=2, window_s=60.0, backoff_s=0.5), clock)
    assert policy.try_begin() and policy.backoff_s() == 0.5
    clock.now += 30
    assert policy.try_begin() and policy.backoff_s() == 1.0
    assert not policy.try_begin()                  # a third within 60 s: spent
    clock.now += 31                                # the first left the window
    assert policy.try_begin() and policy.backoff_s() == 1.0
    assert not policy.try_begin()


@pytest.mark.parametrize("config", [RestartConfig(enabled=False), RestartConfig(max_restarts=0)])
def test_restarts_off_or_a_zero_budget_never_restart(config):
    assert not RestartPolicy(config).try_begin()


def test_a_request_is_blamed_only_after_three_failures_without_a_token():
    sched, _ = make()
    a = sched.add_request("a", [5, 6], greedy(8))
    b = sched.add_request("b", [7, 8], greedy(8))
    blame = FailureAttribution()
    live = {"a", "b"}
    assert blame.strike([a, b], live) == [] and not a.isolated
    b.output_token_ids.append(11)                  # b made progress, a did not
    assert blame.strike([a, b], live) == []
    assert a.isolated and not b.isolated           # a is a suspect now; b starts over
    assert blame.strike([b], live) == [] and b.isolated   # a not in flight: no strike
    b.output_token_ids.append(12)
    assert blame.strike([a, b], live) == [a]       # third time in flight with no token


def test_a_suspect_that_got_a_token_starts_over():
    sched, _ = make()
    a = sched.add_request("a", [5, 6], greedy(8))
    blame = FailureAttribution()
    blame.strike([a], {"a"})
    blame.strike([a], {"a"})
    a.output_token_ids.append(12)
    assert blame.strike([a], {"a"}) == [] and blame.strike([a], {"a"}) == []
    assert blame.strike([a], {"a"}) == [a]


def test_requeue_for_recompute_resumes_every_request_on_a_fresh_runner_with_the_same_tokens():
    prompts = {f"r{i}": [3 + (i * 7 + j) % 40 for j in range(2 + 3 * i)] for i in range(6)}
    sched, mirror = make(num_blocks=40, max_num_batched_tokens=16)
    reqs = {rid: sched.add_request(rid, prompt, greedy(12)) for rid, prompt in prompts.items()}
    for _ in range(5):
        so = sched.schedule()
        sched.update_from_output(so, mirror.run(so))
    lost = sched.schedule()          # in flight when the executor dies: its output never comes
    assert lost is not None and sched.running
    sched.abort_request("r5")        # aborted while in flight: nothing to resume
    sched.add_request("late", [9, 9, 9], greedy(4))    # arrived during the restart

    unfit = sched.requeue_all_for_recompute(num_blocks=60)
    assert unfit == [] and not sched.running and sched.pool.num_free == 60
    assert [r.req_id for r in sched.waiting] == [f"r{i}" for i in range(5)] + ["late"]
    assert all(r.status is RequestStatus.WAITING and not r.in_flight and r.num_computed_tokens
               == 0 and not r.known_to_runner for r in sched.waiting)
    fresh = RunnerMirror(sched)      # knows no request; every step must pass its checks
    first = sched.schedule()
    assert first.finished_slots == [] and not first.scheduled_cached_reqs.num_reqs
    assert [r.slot for r in first.scheduled_new_reqs] == list(range(first.num_reqs))
    sched.update_from_output(first, fresh.run(first))
    drain(sched, fresh)
    for rid in [f"r{i}" for i in range(5)]:
        assert reqs[rid].output_token_ids == solo(prompts[rid], greedy(12)), rid
    assert reqs["r5"].finish_reason is FinishReason.ABORT


def test_requests_that_no_longer_fit_a_smaller_cache_are_finished_with_error():
    sched, _ = make(num_blocks=64, block_size=4)
    small = sched.add_request("small", [5] * 4, greedy(4))      # needs 2 blocks
    big = sched.add_request("big", [5] * 40, greedy(20))        # needs 15 blocks
    assert sched.requeue_all_for_recompute(num_blocks=8) == [big]
    assert big.finish_reason is FinishReason.ERROR and "big" not in sched.requests
    assert list(sched.waiting) == [small] and sched.pool.num_blocks == 8


def test_suspects_run_one_at_a_time_until_each_gets_a_token_and_others_are_not_held():
    sched, mirror = make(max_num_batched_tokens=64)
    a = sched.add_request("a", [5, 6, 7], greedy(4))
    b = sched.add_request("b", [8, 9], greedy(4))
    sched.add_request("c", [10, 11], greedy(4))
    a.isolated = b.isolated = True
    s0 = sched.schedule()
    assert [r.req_id for r in sched.batch(s0.step_id)] == ["a"]  # b waits (FCFS: c waits behind it)
    sched.update_from_output(s0, mirror.run(s0))
    assert not a.isolated                          # a got a token: no longer a suspect
    s1 = sched.schedule()
    assert {r.req_id for r in sched.batch(s1.step_id)} == {"a", "b", "c"}
