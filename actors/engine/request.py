"""One generation request as the scheduler tracks it, and what a stream yields."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from actorexec.protocol import SamplingParams, TokenLogprobs


class RequestStatus(enum.Enum):
    WAITING = "waiting"          # queued, holds no blocks (new, or preempted)
    RUNNING = "running"          # holds blocks; scheduled whenever not in flight
    FINISHED = "finished"        # stopped (EOS, stop token, length) or aborted


class FinishReason(enum.StrEnum):
    STOP = "stop"                # EOS or a stop token id
    LENGTH = "length"            # max_tokens or max_model_len
    ABORT = "abort"              # engine.abort() or the caller stopped reading
    ERROR = "error"              # the executor failed (or, alone, this request: see restarts)


@dataclass(eq=False)
class Request:
    """Scheduler-side state of one request.

    The scheduler keeps what the runner knows (``num_sent_tokens``,
    ``num_sent_blocks``, and ``slot``: the runner slot that names it in steps while
    the runners hold it) so each step sends only the diff.
    ``num_computed_tokens`` advances when a step is scheduled: the schedule is
    as good as done, since workers run steps in order. With async scheduling a
    request can be in two in-flight steps; ``num_output_placeholders`` counts
    the tokens those steps will sample (their values still on the device), and
    ``num_sent_tokens`` may then run ahead of the tokens the host knows.
    """

    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    arrival: int                                   # FCFS order; lower runs first
    output_token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    num_in_flight: int = 0                         # in-flight steps it is in (0, 1 or 2)
    last_step_id: int = -1                         # the latest step it was scheduled in
    num_output_placeholders: int = 0               # tokens in-flight steps will sample for it
    slot: int | None = None                        # its runner slot; None: runners lack it
    num_sent_tokens: int = 0
    num_sent_blocks: int = 0
    num_preemptions: int = 0
    # A suspect of repeated executor failures (engine/supervisor.py): runs only while no
    # other isolated request runs, until it produces a token.
    isolated: bool = False

    @property
    def known_to_runner(self) -> bool:
        return self.slot is not None

    @property
    def num_tokens(self) -> int:
        """Prompt plus outputs: the full known sequence."""
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_tokens_with_placeholders(self) -> int:
        """The sequence once every in-flight step's sample is in (what the runners hold)."""
        return self.num_tokens + self.num_output_placeholders

    @property
    def in_flight(self) -> bool:
        return self.num_in_flight > 0

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED


@dataclass
class RequestOutput:
    """What ``AsyncEngine.generate`` yields: the tokens (and text) new since the last yield.

    ``token_ids`` is every output token so far; ``text`` the decoded delta
    (empty when there is no tokenizer). ``finished`` is set on the last one.
    ``logprobs`` has one entry per new token when the request asked for them.
    """

    request_id: str
    new_token_ids: list[int]
    token_ids: list[int]
    text: str = ""
    finished: bool = False
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprobs] = field(default_factory=list)
