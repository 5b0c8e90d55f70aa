"""Each inconsistent SchedulerOutput raises InvalidRequestError before any state changes,
and the very next valid step still gives the right tokens."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from actorexec.protocol import InvalidRequestError, NewRequestData, SamplingParams, SchedulerOutput
from actorexec.protocol.columns import pack_int32
from tests.actors.model_runner.sim_scheduler import GREEDY, SimScheduler, make_runner
from tests.protocol.columns import ints

replace = msgspec.structs.replace


def _with_entry(column: bytearray, i: int, value: int) -> bytearray:
    """``column`` (int32) with entry ``i`` set to ``value``."""
    values = ints(column)
    values[i] = value
    return bytearray(pack_int32(values))


def _with_cached(so: SchedulerOutput, **columns: object) -> SchedulerOutput:
    return replace(so, scheduled_cached_reqs=replace(so.scheduled_cached_reqs, **columns))


# The SimScheduler gives x slot 0 and y slot 1; slots 2-7 of the runner's 8 are empty.
def _with_slots(*slots: int) -> Callable[[SchedulerOutput], SchedulerOutput]:
    """The cached requests named by ``slots`` instead (the other columns unchanged)."""
    return lambda so: _with_cached(so, slots=bytearray(pack_int32(slots)))


def _token_outside_vocab(so: SchedulerOutput) -> SchedulerOutput:
    c = so.scheduled_cached_reqs
    # Every decoding request gains one host token (sync scheduling): request 0's is first.
    return _with_cached(so, new_token_ids=_with_entry(c.new_token_ids, 0, 10_000))


def _block_outside_cache(so: SchedulerOutput) -> SchedulerOutput:
    c = so.scheduled_cached_reqs
    return _with_cached(so, num_new_blocks=_with_entry(c.num_new_blocks, 0, 1),
                        new_block_ids=bytearray(pack_int32([999])) + c.new_block_ids)


def _too_many_tokens_for_blocks(so: SchedulerOutput) -> SchedulerOutput:
    new = NewRequestData(req_id="big", slot=6, prompt_token_ids=list(range(1, 40)),
                         sampling_params=GREEDY, block_ids=[60],  # 39 tokens, 1 block of 4
                         num_scheduled_tokens=39)
    return replace(so, scheduled_new_reqs=[*so.scheduled_new_reqs, new])


def _duplicate_new_request(so: SchedulerOutput) -> SchedulerOutput:
    dup = NewRequestData(req_id="x", slot=5, prompt_token_ids=[1, 2],
                         sampling_params=GREEDY, block_ids=[61], num_scheduled_tokens=2)
    return replace(so, scheduled_new_reqs=[dup])


def _finished(*slots: object) -> Callable[[SchedulerOutput], SchedulerOutput]:
    return lambda so: replace(so, finished_slots=list(slots))


def _with_new(req: NewRequestData, num_tokens: object) -> Callable[[SchedulerOutput],
                                                                     SchedulerOutput]:
    """Adds ``req`` (running ``num_tokens``) to a step that is otherwise valid."""
    def corrupt(so: SchedulerOutput) -> SchedulerOutput:
        added = replace(req, num_scheduled_tokens=num_tokens)
        return replace(so, scheduled_new_reqs=[*so.scheduled_new_reqs, added])
    return corrupt


def _new(req_id: str = "z", blocks: tuple[int, ...] = (60,), computed: int = 0,
         params: SamplingParams = GREEDY, slot: object = 5) -> NewRequestData:
    return NewRequestData(req_id=req_id, slot=slot, prompt_token_ids=[1, 2, 3],
                          sampling_params=params, block_ids=list(blocks),
                          num_computed_tokens=computed)


def _two_new(first: NewRequestData, second: NewRequestData
             ) -> Callable[[SchedulerOutput], SchedulerOutput]:
    return lambda so: _with_new(second, 3)(_with_new(first, 3)(so))


def _cached_going_back(so: SchedulerOutput) -> SchedulerOutput:
    c = so.scheduled_cached_reqs
    start = ints(c.num_computed_tokens)[0]
    return _with_cached(so, num_computed_tokens=_with_entry(c.num_computed_tokens, 0, start - 1))


def _zero_token_count(so: SchedulerOutput) -> SchedulerOutput:
    c = so.scheduled_cached_reqs
    return _with_cached(so, num_scheduled_tokens=_with_entry(c.num_scheduled_tokens, 0, 0))


def _misaligned_column(so: SchedulerOutput) -> SchedulerOutput:
    return _with_cached(so, num_computed_tokens=so.scheduled_cached_reqs.num_computed_tokens[:-1])


def _short_column(so: SchedulerOutput) -> SchedulerOutput:
    return _with_cached(so, num_computed_tokens=so.scheduled_cached_reqs.num_computed_tokens[:-4])


def _counts_not_adding_up(so: SchedulerOutput) -> SchedulerOutput:
    c = so.scheduled_cached_reqs
    return _with_cached(so, num_new_tokens=_with_entry(c.num_new_tokens, 0, 2))


CASES: dict[str, tuple[Callable[[SchedulerOutput], SchedulerOutput], str]] = {
    "unknown slot": (_with_slots(4, 1), "slot 4 holds no request"),
    "slot outside the runner's": (_with_slots(0, 8), r"slots outside \[0, 8\): \[8\]"),
    "negative slot": (_with_slots(-1, 1), "slots outside"),
    "slot twice in a step": (_with_slots(0, 0), r"slot 0 \('x'\) appears twice"),
    "new request in a held slot": (_with_new(_new(slot=1), 3), "slot 1, which holds request 'y'"),
    "new request's slot out of range": (_with_new(_new(slot=8), 3), r"slot must be .* \[0, 7\]"),
    "new request's slot not an int": (_with_new(_new(slot=True), 3), "slot must be an integer"),
    "two new requests in one slot": (_two_new(_new("p"), _new("q")),
                                     r"slot 5 \('q'\) appears twice"),
    "new request longer than max_model_len": (
        _with_new(replace(_new(blocks=(60,)), prompt_token_ids=[1] * 300), 3),
        "300 tokens exceed max_model_len"),
    "one new request twice": (_two_new(_new("p", slot=5), _new("p", slot=6)), "added twice"),
    "finished slot out of range": (_finished(0, 99), "a finished slot must be"),
    "cached request in a finished slot": (_finished(0), "slot 0 holds no request"),
    "token outside vocab": (_token_outside_vocab, "outside the vocabulary"),
    "block outside cache": (_block_outside_cache, "outside the KV cache"),
    "too many tokens for blocks": (_too_many_tokens_for_blocks, "blocks, it has 1"),
    "duplicate new request": (_duplicate_new_request, "already exists"),
    # Regressions (issue 8, defect 7): each of these was accepted before.
    "new request starting past 0": (_with_new(_new(computed=2), 1), "starts at 0"),
    "cached request going back": (_cached_going_back, "must start where the last ended"),
    "stop id outside vocab": (_with_new(_new(params=SamplingParams(stop_token_ids=(10_000,))),
                                        3), "stop_token_ids"),
    "block given twice": (_with_new(_new(blocks=(60, 60)), 3), "given out twice"),
    "empty request id": (_with_new(_new(req_id=""), 3), "printable string"),
    "control characters in request id": (_with_new(_new(req_id="a\nb"), 3), "printable"),
    "fractional token count": (_with_new(_new(), 1.5), "with no tokens"),
    "zero token count": (_zero_token_count, "with no tokens"),
    "column not whole int32s": (_misaligned_column, "must be int32 bytes"),
    "column shorter than the slots": (_short_column, "differ in length"),
    "token counts not adding up": (_counts_not_adding_up, "do not add up"),
    "valid new request, bad cached diff": (
        lambda so: _token_outside_vocab(_with_new(_new(), 3)(so)), "outside the vocabulary"),
}


def _snapshot(sim: SimScheduler) -> dict[str, tuple]:
    return {rid: (list(s.prompt_token_ids), list(s.output_token_ids), list(s.block_ids),
                  s.num_computed_tokens, s.num_scheduled_tokens)
            for rid, s in sim.runner.requests.items()}


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
    before = _snapshot(sim)
    with pytest.raises(InvalidRequestError, match=message):
        sim.runner.execute_model(corrupt(so))
    assert _snapshot(sim) == before     # the whole step was refused: nothing changed
    out = sim.runner.execute_model(so)  # the valid step, against untouched state
    assert out is not None
    sim.update(so, out)
    assert sim.run() == reference


def test_a_step_that_skips_ahead_inside_a_prompt_is_refused(checkpoints):
    """Issue 8, defect 7: skipping [4, 6) of a prompt left its K/V unwritten (wrong tokens)."""
    prompt = list(range(1, 11))
    expected = SimScheduler(make_runner(checkpoints["llama"])).run({0: [("p", prompt, 4)]})
    sim = SimScheduler(make_runner(checkpoints["llama"]), token_budget=4)
    sim.add("p", prompt, max_tokens=4)
    sim.step()                                   # prefill chunk [0, 4)
    so = sim.schedule()                          # next chunk [4, 8)
    c = so.scheduled_cached_reqs
    assert ints(c.num_computed_tokens) == [4]
    skipped = _with_cached(so, num_computed_tokens=bytearray(pack_int32([6])))
    with pytest.raises(InvalidRequestError, match="must start where the last ended"):
        sim.runner.execute_model(skipped)        # would run [6, 10) and sample
    out = sim.runner.execute_model(so)
    assert out is not None
    sim.update(so, out)
    assert sim.run() == expected


def test_sampling_params_at_the_edge_of_their_ranges_run(checkpoints):
    """The bounds SamplingParams accepts are ones the sampler can hold (no late failure)."""
    edge = [SamplingParams(top_k=2**31 - 1, seed=2**63 - 1, temperature=1e-30, logprobs=20,
                           max_tokens=2**31 - 1, presence_penalty=2.0, frequency_penalty=-2.0,
                           stop_token_ids=(127,)),
            SamplingParams(top_k=-1, seed=-(2**63), top_p=1e-9, min_p=1.0,
                           repetition_penalty=1e-3),
            SamplingParams(top_k=0, temperature=1e6)]
    sim = SimScheduler(make_runner(checkpoints["llama"]))
    for i, params in enumerate(edge):
        sim.add(f"e{i}", [1, 5, 9], params, max_tokens=3)
    outputs = sim.run()
    assert sorted(outputs) == ["e0", "e1", "e2"]
    assert all(len(tokens) == 3 and all(0 <= t < 128 for t in tokens)
               for tokens in outputs.values())
