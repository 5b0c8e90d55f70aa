"""What completions and chat completions share: body decoding, checks, streaming, usage.

A subclass turns engine outputs into its response shapes (``chunk_choice``,
``full_choice``) and prompts into token ids; this class adds the requests,
streams them as SSE or collects them, and writes usage.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from actorexec.actors.engine import AsyncEngine, RequestOutput, Tokenizer
from actorexec.protocol import SamplingParams

from .errors import APIError, bad_request, engine_unavailable, json_response
from .fanout import Choice, Fanout, error_event_body
from .metrics import ServerMetrics
from .protocol import SamplingFields
from .sampling import check_common, stop_strings
from .streaming import DONE, Emit, EventStreamResponse, Outcome, race_client, sse_event

T = TypeVar("T")
MAX_BODY_BYTES = 16 * 1024 * 1024
_json = msgspec.json.Encoder()


async def read_body(request: Request, kind: type[T]) -> T:
    """The JSON body decoded as ``kind``; a 400 naming the field when it does not fit."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise APIError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"the request body is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        return msgspec.json.decode(b"".join(chunks), type=kind)
    except msgspec.ValidationError as exc:
        raise bad_request(f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None


class OpenAIServing:
    """Base of the two generation endpoints (one instance per server)."""

    id_prefix = "cmpl"
    object_name = "text_completion"
    chunk_object_name = "text_completion"

    def __init__(self, engine: AsyncEngine, model_name: str, metrics: ServerMetrics,
                 shutdown: asyncio.Event) -> None:
        self.engine = engine
        self.model_name = model_name
        self.metrics = metrics
        self.shutdown = shutdown          # set when the server starts stopping

    @property
    def tokenizer(self) -> Tokenizer:
        if self.engine.tokenizer is None:
            raise bad_request("this model has no tokenizer: send token ids as the prompt")
        return self.engine.tokenizer

    # ------------------------------------------------------------- checks
    def check_request(self, req: SamplingFields) -> None:
        if req.model != self.model_name:
            raise APIError(HTTPStatus.NOT_FOUND, f"the model `{req.model}` does not exist; this "
                           f"server serves `{self.model_name}`", param="model",
                           code="model_not_found")
        if self.engine.is_failed:
            raise engine_unavailable("the engine has failed; restart the server")
        if self.shutdown.is_set():
            raise APIError(HTTPStatus.SERVICE_UNAVAILABLE, "the server is shutting down",
                           type="service_unavailable", code="shutting_down")
        check_common(req)

    def check_length(self, num_prompt_tokens: int, max_tokens: int) -> None:
        limit = self.engine.max_model_len
        if num_prompt_tokens + max_tokens > limit:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {num_prompt_tokens + max_tokens} tokens ({num_prompt_tokens} in the "
                f"prompt, {max_tokens} for the completion). Reduce the prompt or max_tokens.",
                "max_tokens")

    def start(self, req: SamplingFields, prompts: Sequence[list[int]],
              params: Sequence[SamplingParams]) -> Fanout:
        fanout = Fanout(self.engine, self.metrics, f"{self.id_prefix}-{uuid.uuid4().hex}")
        for ids in prompts:
            fanout.add_prompt(ids, params, stop_strings(req.stop))
        return fanout

    # --------------------------------------------------- response shapes
    def chunk_choice(self, choice: Choice, out: RequestOutput) -> dict[str, Any] | None:
        """One streamed choice for this output, or None when it carries nothing."""
        raise NotImplementedError

    def full_choice(self, choice: Choice) -> dict[str, Any]:
        raise NotImplementedError

    def prologue(self, fanout: Fanout) -> list[dict[str, Any]]:
        """Choices streamed before any output (chat: the role)."""
        return []

    # ---------------------------------------------------------- responding
    async def respond(self, request: Request, req: SamplingFields, fanout: Fanout,
                      ) -> Response | EventStreamResponse:
        created = int(time.time())
        if req.stream:
            usage = req.stream_options is not None and req.stream_options.include_usage
            head = {"id": fanout.request_id, "object": self.chunk_object_name,
                    "created": created, "model": self.model_name}
            return EventStreamResponse(
                lambda emit: self._stream(emit, fanout, head, usage), fanout.close,
                self.shutdown)
        try:
            outcome, _ = await race_client(request.receive, fanout.run(_accumulate),
                                           self.shutdown)
        finally:
            fanout.close()
        if outcome is Outcome.DISCONNECTED:
            return Response(status_code=499)      # nobody is listening any more
        if outcome is Outcome.SHUTDOWN:
            raise APIError(HTTPStatus.SERVICE_UNAVAILABLE, "the server is shutting down",
                           type="service_unavailable", code="shutting_down")
        return json_response({
            "id": fanout.request_id, "object": self.object_name, "created": created,
            "model": self.model_name, "choices": [self.full_choice(c) for c in fanout.choices],
            "usage": fanout.usage()})

    async def _stream(self, emit: Emit, fanout: Fanout, head: dict[str, Any],
                      include_usage: bool) -> None:
        tail = {"usage": None} if include_usage else {}

        async def send(choice: dict[str, Any]) -> None:
            await emit(sse_event(_json.encode({**head, "choices": [choice], **tail})))

        async def on_output(choice: Choice, out: RequestOutput) -> None:
            body = self.chunk_choice(choice, out)
            if body is not None:
                await send(body)

        try:
            for body in self.prologue(fanout):
                await send(body)
            await fanout.run(on_output)
            if include_usage:
                await emit(sse_event(_json.encode(
                    {**head, "choices": [], "usage": fanout.usage()})))
        except Exception as exc:      # the status went out already: report it in the stream
            await emit(sse_event(_json.encode(error_event_body(exc))))
        await emit(DONE)


async def _accumulate(choice: Choice, out: RequestOutput) -> None:
    choice.text.append(out.text)
    choice.logprobs += out.logprobs
