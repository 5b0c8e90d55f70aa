"""A minimal decode driver for benchmarks: prefill a group of requests, then decode.

It builds diff-style SchedulerOutputs by hand (as an engine would) so that a
benchmark measures the executor and workers, not a scheduler's policy. Each
group owns disjoint KV blocks and runner slots, so several groups can be in
flight at once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from actorexec.protocol import (
    ModelRunnerOutput,
    NewRequestData,
    SamplingParams,
    SchedulerOutput,
)

GREEDY = SamplingParams(temperature=0.0, max_tokens=1 << 20)
_step_ids = itertools.count(1)


@dataclass
class RequestGroup:
    """``num_reqs`` requests of ``prompt_len`` tokens, blocks from ``first_block`` on, runner
    slots from ``first_slot`` on."""

    name: str
    num_reqs: int
    prompt_len: int
    max_new_tokens: int
    block_size: int
    first_block: int
    vocab_size: int
    first_slot: int = 0
    tokens: dict[str, list[int]] = field(default_factory=dict)
    blocks: dict[str, list[int]] = field(default_factory=dict)
    computed: dict[str, int] = field(default_factory=dict)  # positions scheduled so far
    pending: dict[str, list[int]] = field(default_factory=dict)
    slots: dict[str, int] = field(default_factory=dict)
    batches: dict[int, list[str]] = field(default_factory=dict)  # step id -> its requests

    def __post_init__(self) -> None:
        per_req = -(-(self.prompt_len + self.max_new_tokens) // self.block_size)
        for i in range(self.num_reqs):
            rid = f"{self.name}-{i}"
            start = self.first_block + i * per_req
            self.blocks[rid] = list(range(start, start + per_req))
            self.tokens[rid] = [(7 * i + 13 * j + 3) % self.vocab_size
                                for j in range(self.prompt_len)]
            self.computed[rid] = 0
            self.pending[rid] = []
            self.slots[rid] = self.first_slot + i

    @property
    def num_blocks(self) -> int:
        return sum(len(b) for b in self.blocks.values())

    def prefill(self) -> SchedulerOutput:
        return self.prefill_steps(1 << 62)[0]

    def prefill_steps(self, budget: int) -> list[SchedulerOutput]:
        """Whole prompts, as many per step as ``budget`` tokens hold (one at least)."""
        steps: list[SchedulerOutput] = []
        so, used = SchedulerOutput(step_id=next(_step_ids)), 0
        for rid, toks in self.tokens.items():
            if used and used + len(toks) > budget:
                steps.append(so)
                so, used = SchedulerOutput(step_id=next(_step_ids)), 0
            self.batches.setdefault(so.step_id, []).append(rid)
            so.add_new(NewRequestData(req_id=rid, slot=self.slots[rid], prompt_token_ids=list(toks),
                                      sampling_params=GREEDY, block_ids=self.blocks[rid]),
                       len(toks))
            used += len(toks)
            self.computed[rid] = len(toks)
        return [*steps, so]

    def decode(self, on_device: bool = False) -> SchedulerOutput:
        """One decode step: each request runs the token its previous step sampled. With
        ``on_device`` (async scheduling) that token is taken from the runners' device rows,
        so the step may be sent before the previous one's output arrived."""
        so = SchedulerOutput(step_id=next(_step_ids))
        self.batches[so.step_id] = list(self.tokens)
        for rid in self.tokens:
            if on_device:
                so.add_cached(self.slots[rid], num_computed_tokens=self.computed[rid],
                              num_scheduled_tokens=1, num_device_tokens=1)
            else:
                so.add_cached(self.slots[rid], num_computed_tokens=self.computed[rid],
                              num_scheduled_tokens=1, new_token_ids=self.pending[rid])
            self.pending[rid] = []
            self.computed[rid] += 1
        return so

    def finish(self) -> SchedulerOutput:
        """A step that only drops the group's requests (the runners free their rows)."""
        return SchedulerOutput(step_id=next(_step_ids), finished_slots=list(self.slots.values()))

    def absorb(self, out: ModelRunnerOutput) -> int:
        """Record sampled tokens (the output lists its step's requests in batch order);
        returns how many were sampled."""
        n = 0
        for rid, toks in zip(self.batches.pop(out.step_id), out.sampled_lists(), strict=True):
            self.tokens[rid].extend(toks)
            self.pending[rid].extend(toks)
            n += len(toks)
        return n
