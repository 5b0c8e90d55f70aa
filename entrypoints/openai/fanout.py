"""One API request as engine requests: ``prompts x n`` choices, added and read together."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from actorexec.actors.engine import AsyncEngine, RequestOutput, RequestStream
from actorexec.protocol import (
    ActorClosedError,
    ActorexecError,
    ExecutorFailedError,
    InvalidRequestError,
    SamplingParams,
    TokenLogprobs,
)

from .errors import APIError, bad_request, engine_unavailable
from .metrics import RequestTracker, ServerMetrics


@dataclass
class Choice:
    """One choice of the response: its engine request and what has been produced so far."""

    index: int
    stream: RequestStream
    tracker: RequestTracker
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    num_tokens: int = 0
    finish_reason: str | None = None
    text_offset: int = 0                  # characters emitted so far (completions logprobs)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


OnOutput = Callable[[Choice, RequestOutput], Awaitable[None]]


class Fanout:
    """Adds every choice's engine request up front (all validated before any response) and
    reads their streams concurrently. ``close()`` aborts what has not finished."""

    def __init__(self, engine: AsyncEngine, metrics: ServerMetrics, request_id: str) -> None:
        self.engine = engine
        self.metrics = metrics
        self.request_id = request_id
        self.choices: list[Choice] = []
        self.num_prompt_tokens = 0

    def add_prompt(self, prompt_token_ids: list[int], params: Sequence[SamplingParams],
                   stop: Sequence[str]) -> None:
        """Adds ``len(params)`` choices for one prompt; on a bad request, raises a 400."""
        self.num_prompt_tokens += len(prompt_token_ids)
        for p in params:
            index = len(self.choices)
            try:
                stream = self.engine.add_request(prompt_token_ids, p,
                                                 f"{self.request_id}-{index}", stop)
            except InvalidRequestError as exc:
                self.close()
                raise bad_request(str(exc)) from None
            except (ExecutorFailedError, ActorClosedError) as exc:
                self.close()
                raise engine_unavailable(f"the engine cannot take requests: {exc}") from None
            except BaseException:
                self.close()
                raise
            tracker = self.metrics.track(len(prompt_token_ids))
            self.choices.append(Choice(index, stream, tracker))

    async def run(self, on_output: OnOutput) -> None:
        """Reads every choice to its end, calling ``on_output`` for each output in order."""
        if len(self.choices) == 1:      # the common case needs no extra task
            await self._read(self.choices[0], on_output)
            return
        try:
            async with asyncio.TaskGroup() as group:
                for choice in self.choices:
                    group.create_task(self._read(choice, on_output))
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None

    async def _read(self, choice: Choice, on_output: OnOutput) -> None:
        try:
            async for out in choice.stream:
                choice.tracker.observe(out)
                choice.num_tokens = len(out.token_ids)
                if out.finished:
                    reason = out.finish_reason
                    choice.finish_reason = reason.value if reason is not None else "stop"
                await on_output(choice, out)
        except ActorexecError as exc:       # the executor's failure, raised by every stream
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise engine_unavailable(f"the engine failed while generating: {first_line}",
                                     ) from None

    def close(self) -> None:
        for choice in self.choices:
            if not choice.finished:
                choice.tracker.aborted()
                choice.finish_reason = "abort"
            choice.stream.close()

    @property
    def num_completion_tokens(self) -> int:
        return sum(c.num_tokens for c in self.choices)

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.num_prompt_tokens,
                "completion_tokens": self.num_completion_tokens,
                "total_tokens": self.num_prompt_tokens + self.num_completion_tokens}


def error_event_body(exc: BaseException) -> dict[str, object]:
    """What a stream sends when it fails after its 200 status went out."""
    if isinstance(exc, APIError):
        return exc.body()
    return APIError(500, f"{type(exc).__name__}: {exc}").body()
