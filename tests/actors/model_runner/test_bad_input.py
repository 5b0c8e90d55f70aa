"""Each inconsistent SchedulerOutput raises InvalidRequestError before any state changes,
and the very next valid step still gives the right tokens."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from actorexec.protocol import InvalidRequestError, NewRequestData, SchedulerOutput
from tests.actors.model_runner.sim_scheduler import GREEDY, SimScheduler, make_runner

replace = msgspec.structs.replace


def _unknown_request(so: SchedulerOutput) -> SchedulerOutput:
    c = so.scheduled_cached_reqs
    cached = replace(c, req_ids=["ghost", *c.req_ids[1:]])
    counts = {("ghost" if k == c.req_ids[0] else k): v for k, v in so.num_scheduled_tokens.items()}
    return replace(so, scheduled_cached_reqs=cached, num_scheduled_tokens=counts)


def _token_outside_vocab(so: SchedulerOutput) -> SchedulerOutput:
    c = so.scheduled_cached_reqs
    return replace(so, scheduled_cached_reqs=replace(
        c, new_token_ids=[[10_000], *c.new_token_ids[1:]]))


def _block_outside_cache(so: SchedulerOutput) -> SchedulerOutput:
    c = so.scheduled_cached_reqs
    return replace(so, scheduled_cached_reqs=replace(
        c, new_block_ids=[[999], *c.new_block_ids[1:]]))


def _too_many_tokens_for_blocks(so: SchedulerOutput) -> SchedulerOutput:
    new = NewRequestData(req_id="big", prompt_token_ids=list(range(1, 40)),
                         sampling_params=GREEDY, block_ids=[60])  # 39 tokens, 1 block of 4
    return replace(so, scheduled_new_reqs=[*so.scheduled_new_reqs, new],
                   num_scheduled_tokens={**so.num_scheduled_tokens, "big": 39})


def _duplicate_new_request(so: SchedulerOutput) -> SchedulerOutput:
    c = so.scheduled_cached_reqs
    dup = NewRequestData(req_id=c.req_ids[0], prompt_token_ids=[1, 2],
                         sampling_params=GREEDY, block_ids=[61])
    return replace(so, scheduled_new_reqs=[dup])


CASES: dict[str, tuple[Callable[[SchedulerOutput], SchedulerOutput], str]] = {
    "unknown request": (_unknown_request, "unknown request 'ghost'"),
    "token outside vocab": (_token_outside_vocab, "outside the vocabulary"),
    "block outside cache": (_block_outside_cache, "outside the KV cache"),
    "too many tokens for blocks": (_too_many_tokens_for_blocks, "blocks, it has 1"),
    "duplicate new request": (_duplicate_new_request, "already exists"),
}


@pytest.fixture(scope="module")
def reference(checkpoints) -> dict[str, list[int]]:
    sim = SimScheduler(make_runner(checkpoints["llama"]))
    return sim.run({0: [("x", [1, 5, 9, 33], 6), ("y", [1, 7, 8], 6)]})


@pytest.mark.parametrize("case", list(CASES))
def test_bad_step_raises_and_next_valid_step_is_correct(checkpoints, reference, case):
    corrupt, message = CASES[case]
    sim = SimScheduler(make_runner(checkpoints["llama"]))
    sim.add("x", [1, 5, 9, 33], max_tokens=6)
    sim.add("y", [1, 7, 8], max_tokens=6)
    sim.step()
    sim.step()  # both decoding: the next step carries cached diffs
    so = sim.schedule()
    with pytest.raises(InvalidRequestError, match=message):
        sim.runner.execute_model(corrupt(so))
    out = sim.runner.execute_model(so)  # the valid step, against untouched state
    assert out is not None
    sim.update(so, out)
    assert sim.run() == reference
