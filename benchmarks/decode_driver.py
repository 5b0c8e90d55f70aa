"""A minimal decode driver for benchmarks: prefill a group of requests, then decode.

It builds diff-style SchedulerOutputs by hand (as an engine would) so that a
benchmark measures the executor and workers, not a scheduler's policy. Each
group owns disjoint KV blocks, so several groups can be in flight at once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from actorexec.protocol import (
    CachedRequestData,
    ModelRunnerOutput,
    NewRequestData,
    SamplingParams,
    SchedulerOutput,
)

GREEDY = SamplingParams(temperature=0.0, max_tokens=1 << 20)
_step_ids = itertools.count(1)


@dataclass
class RequestGroup:
    """``num_reqs`` requests of ``prompt_len`` tokens, blocks from ``first_block`` on."""

    name: str
    num_reqs: int
    prompt_len: int
    max_new_tokens: int
    block_size: int
    first_block: int
    vocab_size: int
    tokens: dict[str, list[int]] = field(default_factory=dict)
    blocks: dict[str, list[int]] = field(default_factory=dict)
    computed: dict[str, int] = field(default_factory=dict)
    pending: dict[str, list[int]] = field(default_factory=dict)

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

    @property
    def num_blocks(self) -> int:
        return sum(len(b) for b in self.blocks.values())

    def prefill(self) -> SchedulerOutput:
        new = [NewRequestData(req_id=rid, prompt_token_ids=list(toks), sampling_params=GREEDY,
                              block_ids=self.blocks[rid]) for rid, toks in self.tokens.items()]
        counts = {rid: len(toks) for rid, toks in self.tokens.items()}
        for rid, n in counts.items():
            self.computed[rid] = n
        return SchedulerOutput(step_id=next(_step_ids), scheduled_new_reqs=new,
                               num_scheduled_tokens=counts,
                               total_num_scheduled_tokens=sum(counts.values()))

    def decode(self) -> SchedulerOutput:
        """One decode step: each request runs the token it sampled last step."""
        rids = list(self.tokens)
        cached = CachedRequestData(
            req_ids=rids, resumed_from_preemption=[False] * len(rids),
            new_token_ids=[self.pending[r] for r in rids], new_block_ids=[[] for _ in rids],
            num_computed_tokens=[self.computed[r] - 1 for r in rids])
        for r in rids:
            self.pending[r] = []
        return SchedulerOutput(step_id=next(_step_ids), scheduled_cached_reqs=cached,
                               num_scheduled_tokens=dict.fromkeys(rids, 1),
                               total_num_scheduled_tokens=len(rids))

    def absorb(self, out: ModelRunnerOutput) -> int:
        """Record sampled tokens; returns how many were sampled."""
        n = 0
        for rid, toks in zip(out.req_ids, out.sampled_token_ids, strict=True):
            self.tokens[rid].extend(toks)
            self.pending[rid].extend(toks)
            self.computed[rid] += len(toks)
            n += len(toks)
        return n
