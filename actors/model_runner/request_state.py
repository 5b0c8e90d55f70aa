"""What the runner keeps for each request between steps (the persistent half of the diff)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from actorexec.protocol.sampling import SamplingParams
from actorexec.protocol.scheduler_output import NewRequestData


@dataclass
class CachedRequestState:
    """One request's tokens, blocks and sampler state, updated only from SchedulerOutputs.

    The runner never appends its own samples: sampled tokens come back in the
    next step's ``new_token_ids``, so every pipeline stage holds the same state.
    """

    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int      # tokens with K/V before its latest step: where that step starts
    output_token_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None  # per-request seed -> batch-independent samples
    num_scheduled_tokens: int = 0  # tokens its latest step runs

    @property
    def next_start(self) -> int:
        """Where its next step must start: every token before it has (or gets) its K/V."""
        return self.num_computed_tokens + self.num_scheduled_tokens

    @classmethod
    def from_new(cls, new: NewRequestData, device: torch.device) -> CachedRequestState:
        gen = None
        if new.sampling_params.seed is not None:
            gen = torch.Generator(device=device).manual_seed(new.sampling_params.seed)
        return cls(req_id=new.req_id, prompt_token_ids=list(new.prompt_token_ids),
                   sampling_params=new.sampling_params, block_ids=list(new.block_ids),
                   num_computed_tokens=new.num_computed_tokens,
                   output_token_ids=list(new.output_token_ids), generator=gen)

    @classmethod
    def from_new_params(cls, req_id: str, params: SamplingParams, prompt: list[int],
                        output: list[int] | None = None) -> CachedRequestState:
        """A state without blocks (sampler tests and tools)."""
        return cls.from_new(NewRequestData(req_id=req_id, prompt_token_ids=prompt,
                                           sampling_params=params, block_ids=[],
                                           output_token_ids=list(output or [])),
                            torch.device("cpu"))

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    def token(self, i: int) -> int:
        n = len(self.prompt_token_ids)
        return self.prompt_token_ids[i] if i < n else self.output_token_ids[i - n]

    def tokens(self, start: int, end: int) -> list[int]:
        n = len(self.prompt_token_ids)
        if end <= n:
            return self.prompt_token_ids[start:end]
        return (self.prompt_token_ids + self.output_token_ids)[start:end]
