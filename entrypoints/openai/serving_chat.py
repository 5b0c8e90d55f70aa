"""``POST /v1/chat/completions``: messages rendered with the model's chat template."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from actorexec.actors.engine import RequestOutput

from .chat_template import ChatTemplateError, render_chat
from .errors import bad_request
from .fanout import Choice, Fanout
from .logprobs import chat_logprobs
from .protocol import ChatCompletionRequest
from .sampling import sampling_params
from .serving import OpenAIServing, read_body
from .streaming import EventStreamResponse


class ChatServing(OpenAIServing):
    id_prefix = "chatcmpl"
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"

    async def handle(self, request: Request) -> Response | EventStreamResponse:
        req = await read_body(request, ChatCompletionRequest)
        self.check_request(req)
        if req.response_format not in (None, {"type": "text"}):
            raise bad_request("only response_format {\"type\": \"text\"} is supported",
                              "response_format")
        if req.top_logprobs is not None and not req.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        tokenizer = self.tokenizer
        try:
            text = render_chat(tokenizer.chat_template, req.messages, tokenizer.special_tokens,
                               req.add_generation_prompt, req.chat_template_kwargs)
        except ChatTemplateError as exc:
            raise bad_request(str(exc), "messages") from None
        # As transformers does: the template wrote any BOS itself.
        prompt = tokenizer.encode(text, add_special_tokens=False)
        if not prompt:
            raise bad_request("the chat template rendered an empty prompt", "messages")
        max_tokens = req.max_completion_tokens or req.max_tokens
        if max_tokens is None:
            max_tokens = max(self.engine.max_model_len - len(prompt), 1)
        self.check_length(len(prompt), max_tokens)
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = sampling_params(req, max_tokens, logprobs)
        return await self.respond(request, req, self.start(req, [prompt], params))

    def prologue(self, fanout: Fanout) -> list[dict[str, Any]]:
        # OpenAI streams the role first, in its own chunk per choice.
        return [{"index": c.index, "delta": {"role": "assistant", "content": ""},
                 "logprobs": None, "finish_reason": None} for c in fanout.choices]

    def chunk_choice(self, choice: Choice, out: RequestOutput) -> dict[str, Any] | None:
        if not out.text and not out.finished and not out.logprobs:
            return None
        return {"index": choice.index, "delta": {"content": out.text} if out.text else {},
                "logprobs": self._logprobs(out.logprobs),
                "finish_reason": choice.finish_reason if out.finished else None}

    def full_choice(self, choice: Choice) -> dict[str, Any]:
        return {"index": choice.index,
                "message": {"role": "assistant", "content": "".join(choice.text)},
                "logprobs": self._logprobs(choice.logprobs),
                "finish_reason": choice.finish_reason}

    def _logprobs(self, entries: list[Any]) -> dict[str, Any] | None:
        if not entries:
            return None
        return {"content": chat_logprobs(self.engine.tokenizer, entries)}
