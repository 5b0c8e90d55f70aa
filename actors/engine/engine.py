"""AsyncEngine: the reference engine that drives an Executor from the caller's loop.

One background task (the engine loop) owns the scheduler. It keeps up to
``executor.max_concurrent_batches`` steps in flight, each with requests no
other in-flight step has; when a step's output arrives its requests become
schedulable again and their new tokens go to their streams. ``generate()``
calls only enqueue and read a per-request queue, so thousands of concurrent
streams cost one loop task, not one task each.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from actorexec.actors.executor import Executor
from actorexec.actors.model.hf_config import read_hf_config
from actorexec.protocol import (
    ActorClosedError,
    Config,
    ExecutorFailedError,
    InvalidRequestError,
    KVCacheConfig,
    ModelRunnerOutput,
    SamplingParams,
    SchedulerOutput,
    TokenLogprobs,
)

from .request import FinishReason, Request, RequestOutput
from .scheduler import Scheduler
from .tokenizer import Detokenizer, Tokenizer, load_tokenizer


@dataclass
class _Stream:
    queue: asyncio.Queue[RequestOutput | BaseException]
    detokenizer: Detokenizer | None
    done: bool = False


@dataclass
class _InFlight:
    step: SchedulerOutput
    future: asyncio.Future[ModelRunnerOutput]


class AsyncEngine:
    """Continuous batching over an Executor, streaming tokens to many concurrent callers.

    Create with ``await AsyncEngine.create(config)`` and use as an async
    context manager. A request is added on the first iteration of its
    ``generate()`` stream; an invalid one raises ``InvalidRequestError`` there
    and nothing else is affected. If the executor fails, every live stream
    raises the executor's error and later calls raise at once.
    """

    def __init__(self, config: Config, executor: Executor, kv_cache_config: KVCacheConfig,
                 tokenizer: Tokenizer | None) -> None:
        hf = read_hf_config(config.model.model)
        self.config = config
        self.executor = executor
        self.kv_cache_config = kv_cache_config
        self.tokenizer = tokenizer
        self.vocab_size = hf.vocab_size
        self.max_model_len = config.model.max_model_len or hf.max_position_embeddings
        eos = set(hf.eos_token_ids)
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        self.scheduler = Scheduler(config.scheduler, kv_cache_config.num_blocks,
                                   kv_cache_config.block_size, self.max_model_len, eos)
        self._streams: dict[str, _Stream] = {}
        self._in_flight: list[_InFlight] = []
        self._wake = asyncio.Event()
        self._error: BaseException | None = None
        self._closing = False
        self.peak_in_flight = 0          # most steps ever in flight at once (pipelining check)
        executor.register_failure_callback(self._on_executor_failure)
        self._loop_task = asyncio.create_task(self._run(), name="actorexec-engine-loop")

    @classmethod
    async def create(cls, config: Config, tokenizer: Tokenizer | str | None = "auto",
                     ) -> AsyncEngine:
        """Starts the executor, sizes and allocates the KV cache, and starts the engine loop.

        ``tokenizer="auto"`` loads the one the model directory describes (or none).
        """
        executor = await Executor.create(config)
        try:
            kv_cache_config = await executor.initialize_kv_cache()
            if tokenizer == "auto":
                tokenizer = load_tokenizer(config.model.tokenizer or config.model.model)
            return cls(config, executor, kv_cache_config, tokenizer)  # type: ignore[arg-type]
        except BaseException:
            await executor.shutdown()
            raise

    async def __aenter__(self) -> AsyncEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    @property
    def is_failed(self) -> bool:
        return self._error is not None and not isinstance(self._error, ActorClosedError)

    @property
    def num_free_blocks(self) -> int:
        return self.scheduler.pool.num_free

    # ------------------------------------------------------------------ public API
    async def generate(self, prompt: str | Sequence[int], sampling_params: SamplingParams | None
                       = None, request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Streams one request's new tokens; the last output has ``finished=True``.

        Leaving the stream early (break, cancellation) aborts the request once
        the generator is closed; wrap it in ``contextlib.aclosing`` to make that immediate.
        """
        if self._error is not None:
            raise self._error
        params = sampling_params or SamplingParams()
        token_ids = self._encode(prompt)
        req_id = request_id or uuid.uuid4().hex
        self.scheduler.add_request(req_id, token_ids, params)   # validates; may raise
        stream = _Stream(asyncio.Queue(),
                         self.tokenizer.detokenizer() if self.tokenizer is not None else None)
        self._streams[req_id] = stream
        self._wake.set()
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    return
        finally:
            self._streams.pop(req_id, None)
            if not stream.done and self._error is None:
                self.scheduler.abort_request(req_id)
                self._wake.set()

    async def abort(self, request_id: str) -> None:
        """Stops a request now: its blocks are freed and its stream ends with ``"abort"``."""
        req = self.scheduler.abort_request(request_id)
        if req is not None:
            self._publish(req, [])
            self._wake.set()

    async def shutdown(self) -> None:
        """Ends every live stream with ActorClosedError, stops the loop, shuts the executor."""
        if not self._closing:
            self._closing = True
            self._fail_all(ActorClosedError("the engine was shut down"))
            self._wake.set()
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            for item in self._in_flight:
                item.future.cancel()
        await self.executor.shutdown()

    # ----------------------------------------------------------------- engine loop
    async def _run(self) -> None:
        try:
            while self._error is None:
                self._wake.clear()
                self._harvest()
                self._submit()
                if self.executor.is_failed and not self._in_flight:
                    raise ExecutorFailedError("the executor failed; no step can run")
                await self._wake.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._fail_all(exc)

    def _submit(self) -> None:
        """Fills the pipeline: up to max_concurrent_batches steps of disjoint requests."""
        while len(self._in_flight) < self.executor.max_concurrent_batches:
            step = self.scheduler.schedule()
            if step is None:
                return
            future = asyncio.ensure_future(self.executor.execute_model(step))
            future.add_done_callback(lambda _f: self._wake.set())
            self._in_flight.append(_InFlight(step, future))
            self.peak_in_flight = max(self.peak_in_flight, len(self._in_flight))

    def _harvest(self) -> None:
        """Applies every finished step's output (raising the step's error, if any)."""
        done = [item for item in self._in_flight if item.future.done()]
        for item in done:
            self._in_flight.remove(item)
            output = item.future.result()
            for req, new_tokens in self.scheduler.update_from_output(item.step, output):
                if new_tokens or req.is_finished:
                    logprobs = output.logprobs.get(req.req_id, [])[:len(new_tokens)]
                    self._publish(req, new_tokens, logprobs)

    def _publish(self, req: Request, new_tokens: list[int],
                 logprobs: list[TokenLogprobs] | None = None) -> None:
        stream = self._streams.get(req.req_id)
        if stream is None or stream.done:
            return
        text = stream.detokenizer.step(new_tokens) if stream.detokenizer is not None else ""
        stream.done = req.is_finished
        stream.queue.put_nowait(RequestOutput(
            request_id=req.req_id, new_token_ids=new_tokens, token_ids=list(req.output_token_ids),
            text=text, finished=req.is_finished, finish_reason=req.finish_reason,
            logprobs=logprobs or []))

    def _fail_all(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        for req_id, stream in list(self._streams.items()):
            if not stream.done:
                stream.done = True
                stream.queue.put_nowait(exc)
            req = self.scheduler.requests.get(req_id)
            if req is not None and not req.is_finished:
                req.finish_reason = FinishReason.ERROR

    def _on_executor_failure(self, *args: Any) -> None:
        self._wake.set()

    def _encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidRequestError("this model has no tokenizer: pass token ids")
            return self.tokenizer.encode(prompt)
        ids = list(prompt)
        bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequestError(
                f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        return ids
