"""``POST /v1/completions``: prompts (text or token ids) in, text out."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from actorexec.actors.engine import RequestOutput

from .errors import bad_request
from .fanout import Choice
from .logprobs import completion_logprobs
from .protocol import CompletionRequest
from .sampling import sampling_params
from .serving import OpenAIServing, read_body
from .streaming import EventStreamResponse

DEFAULT_MAX_TOKENS = 16       # OpenAI's default for completions
MAX_PROMPTS = 64


class CompletionServing(OpenAIServing):
    id_prefix = "cmpl"
    object_name = "text_completion"
    chunk_object_name = "text_completion"

    async def handle(self, request: Request) -> Response | EventStreamResponse:
        req = await read_body(request, CompletionRequest)
        self.check_request(req)
        if req.echo:
            raise bad_request("echo is not supported by this server", "echo")
        if req.suffix is not None:
            raise bad_request("suffix is not supported by this server", "suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise bad_request("best_of other than n is not supported by this server", "best_of")
        prompts = self._prompts(req.prompt)
        max_tokens = req.max_tokens if req.max_tokens is not None else DEFAULT_MAX_TOKENS
        for ids in prompts:
            self.check_length(len(ids), max_tokens)
        params = sampling_params(req, max_tokens, req.logprobs)
        return await self.respond(request, req, self.start(req, prompts, params))

    def _prompts(self, prompt: str | list[Any]) -> list[list[int]]:
        """Token ids of each prompt: a string, a list of ids, or a list of either."""
        if isinstance(prompt, str) or (prompt and all(isinstance(t, int) for t in prompt)):
            prompt = [prompt]
        if not prompt or len(prompt) > MAX_PROMPTS:
            raise bad_request(f"prompt must hold 1 to {MAX_PROMPTS} prompts", "prompt")
        out = []
        for p in prompt:
            if isinstance(p, str):
                if not p:
                    raise bad_request("the prompt is empty", "prompt")
                out.append(self.tokenizer.encode(p))
            elif isinstance(p, list) and p and all(
                    isinstance(t, int) and not isinstance(t, bool) for t in p):
                out.append(p)
            else:
                raise bad_request("prompt must be a non-empty string, a list of token ids, or "
                                  "a list of those", "prompt")
        return out

    def chunk_choice(self, choice: Choice, out: RequestOutput) -> dict[str, Any] | None:
        if not out.text and not out.finished and not out.logprobs:
            return None
        return {"index": choice.index, "text": out.text,
                "logprobs": self._logprobs(choice, out.logprobs),
                "finish_reason": choice.finish_reason if out.finished else None}

    def full_choice(self, choice: Choice) -> dict[str, Any]:
        return {"index": choice.index, "text": "".join(choice.text),
                "logprobs": self._logprobs(choice, choice.logprobs),
                "finish_reason": choice.finish_reason}

    def _logprobs(self, choice: Choice, entries: list[Any]) -> dict[str, Any] | None:
        if not entries:
            return None
        body, choice.text_offset = completion_logprobs(self.engine.tokenizer, entries,
                                                       choice.text_offset)
        return body
