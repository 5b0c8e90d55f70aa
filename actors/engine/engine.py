"""AsyncEngine: the reference engine that drives an Executor from the caller's loop.

One background task (the engine loop) owns the scheduler. It keeps up to
``executor.max_concurrent_batches`` steps in flight. With async scheduling
(the default) a decoding request's next step is sent before the previous
one's tokens arrive (its input token stays on the device); otherwise each
in-flight step has requests no other has. Outputs are applied in step order:
the new tokens go to their streams and stop rules run then. ``generate()``
calls only enqueue and read a per-request queue, so thousands of concurrent
streams cost one loop task, not one task each. Each request's text is
detokenized incrementally and checked for stop strings here, in the loop
(``TextStream``), so a stop string finishes the request in the step it appears.
If the executor fails, the loop hands over to the supervisor (supervisor.py),
which replaces the executor; every request then resumes by recompute.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from actorexec.actors.executor import Executor
from actorexec.actors.model.hf_config import read_hf_config, resolve_max_model_len
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

from .main_guard import check_spawn_safe
from .request import FinishReason, Request, RequestOutput
from .request_stream import RequestStream, StreamState
from .scheduler import Scheduler
from .stop_strings import validate_stop_strings
from .supervisor import ExecutorSupervisor, RestartRecord, start_executor
from .text_stream import TextStream
from .tokenizer import Tokenizer, load_tokenizer


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the scheduler's load, for metrics and health pages."""

    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_blocks: int

    @property
    def kv_cache_usage(self) -> float:
        """Share of KV blocks in use, 0..1 (vLLM's ``kv_cache_usage_perc``)."""
        return 1.0 - self.num_free_blocks / self.num_blocks if self.num_blocks else 0.0


@dataclass
class _InFlight:
    step: SchedulerOutput
    future: asyncio.Future[ModelRunnerOutput]


class AsyncEngine:
    """Continuous batching over an Executor, streaming tokens to many concurrent callers.

    Create with ``await AsyncEngine.create(config)`` and use as an async
    context manager. ``add_request()`` validates and queues a request at once
    and returns its ``RequestStream`` (what a server wants: errors before any
    response is sent); ``generate()`` does the same on its first iteration. An
    invalid request raises ``InvalidRequestError`` and nothing else is
    affected. If the executor fails, it is replaced and every request resumes
    (``Config.restart``); once the restart budget is spent, every live stream
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
        self.max_model_len = resolve_max_model_len(hf, config.model.max_model_len)
        eos = set(hf.eos_token_ids)
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        self.scheduler = Scheduler(config.scheduler, kv_cache_config.num_blocks,
                                   kv_cache_config.block_size, self.max_model_len, eos,
                                   config.parallel.pipeline_parallel_size)
        self._streams: dict[str, StreamState] = {}
        self._in_flight: list[_InFlight] = []
        self._wake = asyncio.Event()
        self._error: BaseException | None = None
        self._closing = False
        self.peak_in_flight = 0          # most steps ever in flight at once (pipelining check)
        self._supervisor = ExecutorSupervisor(config.restart)
        self._restarting = False         # the executor failed and a fresh one is on its way
        self._watch_executor()
        self._loop_task = asyncio.create_task(self._supervise(), name="actorexec-engine-loop")

    @classmethod
    async def create(cls, config: Config, tokenizer: Tokenizer | str | None = "auto",
                     ) -> AsyncEngine:
        """Starts the executor, sizes and allocates the KV cache, and starts the engine loop.

        ``tokenizer="auto"`` loads the one the model directory describes (or none).
        """
        check_spawn_safe(_spawns_workers(config))
        if tokenizer == "auto":     # before any worker starts: a bad tokenizer fails fast
            tokenizer = load_tokenizer(config.model.tokenizer or config.model.model)
        executor, kv_cache_config = await start_executor(config)
        try:
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
        """The executor failed (a worker died) for good: no request can run any more."""
        if self._error is not None and not isinstance(self._error, ActorClosedError):
            return True
        return self.executor.is_failed and not self._restarting

    @property
    def is_restarting(self) -> bool:
        """A fresh executor is replacing a failed one: streams pause, new requests queue."""
        return self._restarting and self._error is None

    @property
    def restarts(self) -> list[RestartRecord]:
        """Every executor restart so far, oldest first, as logged."""
        return self._supervisor.restarts

    @property
    def num_free_blocks(self) -> int:
        return self.scheduler.pool.num_free

    def stats(self) -> EngineStats:
        return EngineStats(len(self.scheduler.running), len(self.scheduler.waiting),
                           self.scheduler.pool.num_free, self.scheduler.pool.num_blocks)

    # ------------------------------------------------------------------ public API
    def add_request(self, prompt: str | Sequence[int], sampling_params: SamplingParams | None
                    = None, request_id: str | None = None, stop: Sequence[str] = (),
                    ) -> RequestStream:
        """Validates and queues a request now; returns the stream of its outputs.

        Raises ``InvalidRequestError`` (changing nothing) for a request that
        cannot run. ``stop`` strings end the request with ``"stop"`` when its
        text contains one; the stop string and anything after it are not
        emitted. Close the stream (or leave ``async with``) to abort early.
        """
        if self._error is not None:
            raise self._error
        params = sampling_params or SamplingParams()
        stops = validate_stop_strings(stop)
        if stops and self.tokenizer is None:
            raise InvalidRequestError("stop strings need a tokenizer; this model has none")
        token_ids = self._encode(prompt)
        req_id = request_id or uuid.uuid4().hex
        self.scheduler.add_request(req_id, token_ids, params)   # validates; may raise
        state = StreamState()
        if self.tokenizer is not None:
            state.text = TextStream(self.tokenizer.detokenizer(token_ids), stops,
                                    params.min_tokens)
        self._streams[req_id] = state
        self._wake.set()
        return RequestStream(req_id, state, self._close_stream)

    async def generate(self, prompt: str | Sequence[int], sampling_params: SamplingParams | None
                       = None, request_id: str | None = None, stop: Sequence[str] = (),
                       ) -> AsyncIterator[RequestOutput]:
        """Streams one request's new tokens; the last output has ``finished=True``.

        The request is added on the first iteration. Leaving the stream early
        (break, cancellation) aborts the request once the generator is closed;
        wrap it in ``contextlib.aclosing`` to make that immediate.
        """
        async with self.add_request(prompt, sampling_params, request_id, stop) as stream:
            async for out in stream:
                yield out

    async def abort(self, request_id: str) -> None:
        """Stops a request now: its blocks are freed and its stream ends with ``"abort"``."""
        req = self.scheduler.abort_request(request_id)
        if req is not None:
            self._publish(req, [])
            self._wake.set()

    def _close_stream(self, req_id: str, state: StreamState) -> None:
        if self._streams.get(req_id) is state:
            del self._streams[req_id]
        if not state.done and self._error is None:
            self.scheduler.abort_request(req_id)
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
    async def _supervise(self) -> None:
        """The loop task: the engine loop, and after an executor failure that may be
        restarted, the restart and the loop again."""
        while True:
            await self._run()
            if not self.is_restarting or not await self._restart_executor():
                return

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
            if not self._restarting:     # else the supervisor takes over (_supervise)
                self._fail_all(exc)

    def _submit(self) -> None:
        """Fills the pipeline: up to max_concurrent_batches steps (the scheduler decides which
        requests may be in more than one)."""
        while len(self._in_flight) < self.executor.max_concurrent_batches:
            step = self.scheduler.schedule()
            if step is None:
                return
            future = asyncio.ensure_future(self.executor.execute_model(step))
            future.add_done_callback(lambda _f: self._wake.set())
            self._in_flight.append(_InFlight(step, future))
            self.peak_in_flight = max(self.peak_in_flight, len(self._in_flight))

    def _harvest(self) -> None:
        """Applies finished steps' outputs in step order (raising a step's error, if any):
        with async scheduling a step's requests may be in the next step too, so a later
        output never overtakes an earlier one."""
        while self._in_flight and self._in_flight[0].future.done():
            item = self._in_flight.pop(0)
            output = item.future.result()
            for req, new_tokens, logprobs in self.scheduler.update_from_output(item.step,
                                                                                output):
                if new_tokens or req.is_finished:
                    self._publish(req, new_tokens, logprobs)

    def _publish(self, req: Request, new_tokens: list[int],
                 logprobs: list[TokenLogprobs] | None = None) -> None:
        stream = self._streams.get(req.req_id)
        if stream is None or stream.done:
            return
        text, reason = "", req.finish_reason
        if stream.text is not None:
            text, stopped = stream.text.push(new_tokens, len(req.output_token_ids),
                                             req.is_finished)
            if stopped:
                # A stop string ended the text: finish the request now (frees its blocks;
                # a step already in flight for it is ignored when it returns).
                self.scheduler.abort_request(req.req_id)
                reason = FinishReason.STOP
                self._wake.set()
        stream.done = req.is_finished
        stream.queue.put_nowait(RequestOutput(
            request_id=req.req_id, new_token_ids=new_tokens, token_ids=list(req.output_token_ids),
            text=text, finished=req.is_finished, finish_reason=reason,
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

    # ----------------------------------------------------------- restart hooks
    def _watch_executor(self) -> None:
        self.executor.register_failure_callback(
            functools.partial(self._on_executor_failure, self.executor))

    def _on_executor_failure(self, executor: Executor) -> None:
        """Runs once when ``executor`` fails, before the loop sees any error: decides
        whether it is restarted (the in-flight requests are what it may be blamed on)."""
        if executor is self.executor and self._error is None and not self._restarting:
            in_flight = [req for req in self.scheduler.running if req.in_flight]
            self._restarting = self._supervisor.on_failure(executor.failure, in_flight,
                                                           set(self.scheduler.requests))
        self._wake.set()

    async def _restart_executor(self) -> bool:
        """Replaces the failed executor; every unfinished request waits to be recomputed.

        Returns False (every stream ended with the executor's error) if no fresh
        executor could be started.
        """
        for item in self._in_flight:     # failed with the executor; their tokens never came
            if item.future.done() and not item.future.cancelled():
                item.future.exception()
        self._in_flight.clear()
        cause = self.executor.failure or ExecutorFailedError("the executor failed")
        try:
            self.executor, self.kv_cache_config = await self._supervisor.replace(
                self.executor, self.config)
        except Exception as exc:
            cause.add_note(f"restarting the executor failed: {exc!r}")
            self._restarting = False
            self._fail_all(cause)
            return False
        for req in self._supervisor.blamed:
            self._fail_request(req.req_id, self._supervisor.blame_error(req))
        for req in self.scheduler.requeue_all_for_recompute(self.kv_cache_config.num_blocks):
            self._fail_request(req.req_id, InvalidRequestError(
                f"request {req.req_id!r} no longer fits the restarted executor's KV cache "
                f"({self.kv_cache_config.num_blocks} blocks)"))
        self._supervisor.finish(num_resumed=len(self.scheduler.waiting))
        self._restarting = False
        self._watch_executor()           # after the swap: a failure from now on restarts again
        return True

    def _fail_request(self, req_id: str, exc: BaseException) -> None:
        """Ends one request's stream with ``exc``; the others go on."""
        stream = self._streams.get(req_id)
        if stream is not None and not stream.done:
            stream.done = True
            stream.queue.put_nowait(exc)
        req = self.scheduler.abort_request(req_id)
        if req is not None:
            req.finish_reason = FinishReason.ERROR

    def _encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("the prompt is empty")
            if self.tokenizer is None:
                raise InvalidRequestError("this model has no tokenizer: pass token ids")
            return self.tokenizer.encode(prompt)
        ids = list(prompt)
        bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequestError(
                f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        return ids


def _spawns_workers(config: Config) -> bool:
    """Whether the executor this config picks starts worker processes (``mp``)."""
    from actorexec.actors.executor.multiproc import MultiprocExecutor

    try:
        return issubclass(Executor.get_class(config), MultiprocExecutor)
    except ValueError:          # an unknown backend: Executor.create says so
        return False
