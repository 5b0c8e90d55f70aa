"""What the runner keeps for each request between steps (the persistent half of the diff)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from actorexec.protocol.sampling import SamplingParams
from actorexec.protocol.scheduler_output import NewRequestData


@dataclass
class CachedRequestState:
    """One request's tokens, blocks and sampler state, updated only from SchedulerOutputs.

    The runner never appends its own samples on its own: a sampled token joins
    the request when a later step says so, either as a value in
    ``new_token_ids`` or (async scheduling) as a device token, so every rank
    holds the same state. ``output_token_ids`` holds the values this rank was
    sent; ``num_device_tokens`` counts outputs whose values live only in the
    device token table. Only counts matter on the host (inputs, penalties and
    histories are read from the device rows).
    """

    req_id: str
    slot: int                     # its number in the steps (``NewRequestData.slot``)
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int      # tokens with K/V before its latest step: where that step starts
    output_token_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None  # per-request seed -> batch-independent samples
    num_scheduled_tokens: int = 0  # tokens its latest step runs
    num_device_tokens: int = 0     # outputs known only on the device (async scheduling)
    # Its latest step sampled a token that no later step has taken in yet: the one
    # token a step may add as a device token.
    has_device_sample: bool = False

    @property
    def next_start(self) -> int:
        """Where its next step must start: every token before it has (or gets) its K/V."""
        return self.num_computed_tokens + self.num_scheduled_tokens

    @classmethod
    def from_new(cls, new: NewRequestData, device: torch.device) -> CachedRequestState:
        gen = None
        if new.sampling_params.seed is not None:
            gen = torch.Generator(device=device).manual_seed(new.sampling_params.seed)
        return cls(req_id=new.req_id, slot=new.slot, prompt_token_ids=list(new.prompt_token_ids),
                   sampling_params=new.sampling_params, block_ids=list(new.block_ids),
                   num_computed_tokens=new.num_computed_tokens,
                   output_token_ids=list(new.output_token_ids), generator=gen)

    @classmethod
    def from_new_params(cls, req_id: str, params: SamplingParams, prompt: list[int],
                        output: list[int] | None = None) -> CachedRequestState:
        """A state without blocks (sampler tests and tools)."""
        return cls.from_new(NewRequestData(req_id=req_id, slot=0, prompt_token_ids=prompt,
                                           sampling_params=params, block_ids=[],
                                           output_token_ids=list(output or [])),
                            torch.device("cpu"))

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids) + self.num_device_tokens

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + self.num_output_tokens
