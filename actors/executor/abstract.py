"""The Executor: one worker per rank, driven by ``collective_rpc``.

As in vLLM v1's ``executor/abstract.py``, the base class is small: almost every
method is a one-line ``collective_rpc`` delegation, and failure is an explicit
state. Subclasses only start and stop workers (``UniProcExecutor``: in this
process; ``MultiprocExecutor``: one process per rank).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal, overload

from actorexec.actors.worker.health import WorkerHealth
from actorexec.protocol import (
    Config,
    ExecutorFailedError,
    KVCacheConfig,
    KVCacheSpec,
    MethodNotAllowedError,
    ModelRunnerOutput,
    SchedulerOutput,
    StepTiming,
    make_kv_cache_configs,
)
from actorexec.protocol.codec import generic_spec
from actorexec.runtime import ActorRef, PreparedCall, submit_all
from actorexec.runtime.child import import_path

from .futures import CollectiveReplies

logger = logging.getLogger("actorexec.executor")
FailureCallback = Callable[[], None]
Method = str | Callable[..., Any]
BACKENDS = ("uni", "mp", "ray", "external_launcher")


class Executor(abc.ABC):
    """Runs the same call on every rank's worker. Why an actor ref per rank: each
    worker is a mailbox handled in order, so calls reach every rank in call order."""

    # An in-process worker can run any callable; a remote one only when config allows it.
    supports_callable_rpc: ClassVar[bool] = False

    def __init__(self, config: Config) -> None:
        self.config = config
        self.parallel_config = config.parallel
        self.worker_cls: Any = import_path(config.parallel.worker_cls)
        self.method_specs = self.worker_cls.method_specs()
        self.refs: list[ActorRef] = []
        self.failure: BaseException | None = None
        self._failure_callbacks: list[FailureCallback] = []
        self._shut_down = False

    # -- construction ---------------------------------------------------------
    @staticmethod
    def get_class(config: Config) -> type[Executor]:
        backend = config.parallel.distributed_executor_backend
        if backend is None:
            backend = "uni" if config.parallel.world_size == 1 else "mp"
        if backend == "uni":
            from .uniproc import UniProcExecutor
            return UniProcExecutor
        if backend == "mp":
            from .multiproc import MultiprocExecutor
            return MultiprocExecutor
        if backend == "ray":  # Ray is an optional extra: ConfigError saying how to install it
            from .ray_distributed import RayDistributedExecutor, import_ray
            import_ray()
            return RayDistributedExecutor
        if backend == "external_launcher":
            from .external_launcher import ExecutorWithExternalLauncher
            return ExecutorWithExternalLauncher
        if isinstance(backend, str) and ":" in backend:
            backend = import_path(backend)
        if isinstance(backend, type) and issubclass(backend, Executor):
            return backend
        raise ValueError(f"distributed_executor_backend={backend!r} is not one of {BACKENDS}, "
                         "an Executor subclass, or 'module:QualName' of one")

    @classmethod
    async def create(cls, config: Config) -> Executor:
        """A started executor: workers up, ``init_device`` and ``load_model`` done on every rank."""
        executor = (cls.get_class(config) if cls is Executor else cls)(config)
        # Impossible layouts fail here, before any process starts, saying what to change.
        validate = getattr(executor.worker_cls, "validate_config", None)
        if validate is not None:
            validate(config)
        try:
            await executor._start_workers()
            await executor.collective_rpc("init_device")
            await executor.collective_rpc("load_model")
        except BaseException:
            await executor.shutdown(grace_s=0.0)  # kills every worker started so far
            raise
        return executor

    @abc.abstractmethod
    async def _start_workers(self) -> None:
        """Fill ``self.refs`` with one started worker ref per rank; a ref is recorded the
        moment its worker exists, so a cancelled start leaves nothing unowned."""

    @abc.abstractmethod
    async def _stop_workers(self, grace_s: float) -> None:
        """Stop every worker and free what they hold (processes, sockets, files)."""

    async def __aenter__(self) -> Executor:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        # Cancelled callers want out fast: workers get a short grace, then are killed.
        cancelled = exc_type is not None and issubclass(exc_type, asyncio.CancelledError)
        await self.shutdown(grace_s=0.5 if cancelled else 2.0)

    # -- layout ---------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.parallel_config.world_size

    @property
    def max_concurrent_batches(self) -> int:
        """Steps that may be in flight at once: one per pipeline stage, plus one with async
        scheduling (the next step waits at the first stage, so no stage waits for the host)."""
        pp = self.parallel_config.pipeline_parallel_size
        return pp + 1 if self.config.scheduler.async_scheduling else pp

    @property
    def output_rank(self) -> int:
        """TP rank 0 of the last pipeline stage: the rank that samples."""
        return self.world_size - self.parallel_config.tensor_parallel_size

    # -- the one primitive ----------------------------------------------------
    @overload
    def collective_rpc(self, method: Method, args: Sequence[Any] = (),
                       kwargs: dict[str, Any] | None = None, timeout: float | None = None,
                       unique_reply_rank: None = None,
                       non_block: Literal[False] = False) -> asyncio.Future[list[Any]]: ...
    @overload
    def collective_rpc(self, method: Method, args: Sequence[Any] = (),
                       kwargs: dict[str, Any] | None = None, timeout: float | None = None,
                       *, unique_reply_rank: int,
                       non_block: Literal[False] = False) -> asyncio.Future[Any]: ...
    @overload
    def collective_rpc(self, method: Method, args: Sequence[Any] = (),
                       kwargs: dict[str, Any] | None = None, timeout: float | None = None,
                       unique_reply_rank: None = None, *,
                       non_block: Literal[True]) -> list[asyncio.Future[Any]]: ...
    def collective_rpc(self, method: Method, args: Sequence[Any] = (),
                       kwargs: dict[str, Any] | None = None, timeout: float | None = None,
                       unique_reply_rank: int | None = None,
                       non_block: bool = False) -> asyncio.Future[Any] | list[asyncio.Future[Any]]:
        """Send ``method(*args, **kwargs)`` to every rank now (encoded once).

        Returns a future of the list of per-rank results; with
        ``unique_reply_rank``, a future of that rank's result alone; with
        ``non_block=True``, the list of per-rank futures. Every rank answers;
        the future resolves once all have succeeded and fails at the first
        failure. ``timeout`` seconds become a deadline carried by the call.
        Ranks that disagree (futures.py) fail the executor. Raises at once if
        the executor has failed.
        """
        self._check_usable()
        if unique_reply_rank is not None:
            if non_block:
                raise ValueError("non_block=True returns every rank's future; "
                                 "unique_reply_rank's result is already a future")
            if not 0 <= unique_reply_rank < len(self.refs):
                raise ValueError(f"unique_reply_rank={unique_reply_rank} outside "
                                 f"0..{len(self.refs) - 1}")
        prepared = self._prepare(method, args, kwargs)
        deadline = None if timeout is None else time.time() + timeout
        futs = submit_all(self.refs, prepared, deadline)  # one write for same-host ranks
        replies = CollectiveReplies(prepared.method, futs, unique_reply_rank, self._fail,
                                    self._notice_deaths)
        if non_block:
            replies.result.add_done_callback(lambda f: f.cancelled() or f.exception())
            return futs
        return replies.result

    def _prepare(self, method: str | Callable[..., Any], args: Sequence[Any],
                 kwargs: dict[str, Any] | None) -> PreparedCall:
        allowed_callable = self.supports_callable_rpc or self.parallel_config.allow_callable_rpc
        if callable(method):
            if not allowed_callable:
                raise MethodNotAllowedError(
                    "callables may be sent only to the in-process executor or when "
                    "ParallelConfig.allow_callable_rpc=True; call an allow-listed method by name")
            if not self.supports_callable_rpc and "<" in method.__qualname__:
                raise TypeError(f"{method.__qualname__} is not a module-level function; "
                                "only those can be named on the wire (no pickle)")
            return PreparedCall(method, None, args, kwargs)
        spec = self.method_specs.get(method)
        if spec is not None:
            return PreparedCall(method, spec, args, kwargs)
        if ":" in method and allowed_callable:
            return PreparedCall(method, generic_spec(), (list(args), dict(kwargs or {})))
        raise MethodNotAllowedError(f"{self.worker_cls.__name__}.{method} is not on the worker's "
                                    f"RPC allow-list ({', '.join(sorted(self.method_specs))})")

    # -- failure --------------------------------------------------------------
    @property
    def is_failed(self) -> bool:
        return self.failure is not None

    def register_failure_callback(self, callback: FailureCallback) -> None:
        """``callback()`` runs exactly once, when the executor fails (a worker died, the ranks
        diverged, a watchdog fired); at once if it already has."""
        if self.failure is not None:
            callback()
        else:
            self._failure_callbacks.append(callback)

    def _fail(self, error: BaseException) -> None:
        """The ranks can no longer be trusted (one died, they diverged, a watchdog fired):
        fail every pending call, run the failure callbacks once, refuse later calls."""
        if self.failure is not None or self._shut_down:
            return
        logger.error("executor failed: %s", error)
        self.failure = error
        for ref in self.refs:
            ref.fail_pending(error)
        callbacks, self._failure_callbacks = self._failure_callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("failure callback raised")

    def _on_worker_death(self, ref: ActorRef, error: BaseException) -> None:
        self._fail(error)

    def _notice_deaths(self) -> None:
        """Handles now any worker that has died and whose death the loop has not seen yet."""
        for ref in self.refs:
            notice = getattr(ref, "notice_exit", None)
            if notice is not None:
                notice()

    def _check_usable(self) -> None:
        if self.failure is not None:
            raise ExecutorFailedError(f"the executor has failed: {self.failure}") from self.failure
        if self._shut_down:
            raise ExecutorFailedError("the executor has been shut down")

    # -- the worker surface (vLLM v1 names) -----------------------------------
    def execute_model(self, scheduler_output: SchedulerOutput,
                      timeout: float | None = None) -> asyncio.Future[ModelRunnerOutput]:
        """Send one step to every rank now; the future yields the output rank's result."""
        return self.collective_rpc("execute_model", (scheduler_output,), timeout=timeout,
                                   unique_reply_rank=self.output_rank)

    def execute_dummy_batch(self) -> asyncio.Future[list[None]]:
        return self.collective_rpc("execute_dummy_batch")

    def determine_available_memory(self) -> asyncio.Future[list[int]]:
        return self.collective_rpc("determine_available_memory")

    def get_kv_cache_specs(self) -> asyncio.Future[list[dict[str, KVCacheSpec]]]:
        return self.collective_rpc("get_kv_cache_spec")

    async def initialize_from_config(self, kv_cache_configs: list[KVCacheConfig]) -> None:
        """Allocate each rank's KV cache (rank r takes ``kv_cache_configs[r]``), then warm up."""
        await self.collective_rpc("initialize_from_config", (kv_cache_configs,))
        await self.collective_rpc("compile_or_warm_up_model")

    async def initialize_kv_cache(self) -> KVCacheConfig:
        """Size, allocate and warm up the KV cache on every rank; rank 0's config comes back."""
        available = await self.determine_available_memory()
        specs = await self.get_kv_cache_specs()
        configs = make_kv_cache_configs(specs, available, self.config.cache.num_blocks_override)
        await self.initialize_from_config(configs)
        return configs[0]

    def get_step_timeline(self) -> asyncio.Future[list[list[StepTiming]]]:
        """Per rank: when it started and finished each step (for pipelining checks)."""
        return self.collective_rpc("get_step_timeline")

    def check_health(self, timeout: float | None = 10.0) -> asyncio.Future[list[WorkerHealth]]:
        """Each rank's :class:`WorkerHealth`, answered from its event loop even while a step
        runs: what it is busy with and for how long. A rank that cannot answer by
        ``timeout`` is hung; with several ranks that fails the executor."""
        return self.collective_rpc("check_health", timeout=timeout)

    def start_profile(self) -> asyncio.Future[list[None]]:
        return self.collective_rpc("start_profile")

    def stop_profile(self) -> asyncio.Future[list[None]]:
        return self.collective_rpc("stop_profile")

    def sleep(self, level: int = 1) -> asyncio.Future[list[None]]:
        return self.collective_rpc("sleep", (level,))

    def wake_up(self, tags: list[str] | None = None) -> asyncio.Future[list[None]]:
        return self.collective_rpc("wake_up", (tags,))

    async def shutdown(self, grace_s: float = 2.0) -> None:
        """Stop every worker (killed after ``grace_s``); leaves no process or socket file.

        Idempotent and cancel-safe: a cancelled shutdown still kills and cleans up.
        """
        if self._shut_down:
            return
        self._shut_down = True
        await self._stop_workers(grace_s)

    async def _shut_down_politely(self, grace_s: float) -> None:
        """Out-of-process workers: each runs its ``shutdown``, then its ref waits for the
        exit with what is left of ``grace_s`` (the caller kills whatever remains)."""
        start = time.monotonic()
        await self._ask_shutdown(timeout_s=grace_s)
        left = max(0.1, grace_s - (time.monotonic() - start))
        await asyncio.gather(*(ref.close(left) for ref in self.refs))

    async def _stop_in_process_worker(self, grace_s: float) -> None:
        """The one in-process worker (uni, external launcher): its ``shutdown`` if the
        executor is healthy, then its ref closes, also on error or cancellation."""
        try:
            if self.refs and self.failure is None and grace_s > 0:
                await self._ask_shutdown(timeout_s=grace_s)
        finally:
            for ref in self.refs:
                await ref.close(grace_s)

    async def _ask_shutdown(self, timeout_s: float) -> None:
        """Best effort: each live worker runs its ``shutdown`` and stops serving."""
        prepared = PreparedCall("shutdown", self.method_specs["shutdown"])
        futs = submit_all(self.refs, prepared, time.time() + timeout_s)
        if futs:
            for fut in futs:  # failures here are expected (dead or stuck workers)
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            await asyncio.wait(futs, timeout=timeout_s)
