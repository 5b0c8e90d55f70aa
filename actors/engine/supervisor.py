"""Supervised restart: the engine replaces a failed executor and every request goes on.

When the executor fails (a worker died, the ranks diverged, the watchdog
fired), the engine stops scheduling and hands over to its
:class:`ExecutorSupervisor`, which decides at once whether to restart
(:class:`RestartPolicy`: at most ``max_restarts`` within ``window_s``), then
shuts the failed executor down completely, waits the back-off, and starts a
fresh one from the same config with a newly sized KV cache. The engine puts
every unfinished request back in the queue; each is recomputed from its
prompt plus the tokens already streamed, so streams pause and go on.

Which requests a failure is blamed on (:class:`FailureAttribution`) is known
only by repetition: a worker's death names no request. A request that was in
flight at two failures without producing a token in between becomes a
*suspect* and runs only while no other suspect runs; a suspect in flight at a
third such failure is failed alone with :class:`RequestFailedError`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from actorexec.actors.executor import Executor
from actorexec.protocol import (
    ActorDiedError,
    Config,
    KVCacheConfig,
    RequestFailedError,
    RestartConfig,
)
from actorexec.protocol.config import MAX_BACKOFF_S

from .request import Request

logger = logging.getLogger("actorexec.engine")

STRIKES_TO_SUSPECT = 2   # in flight at this many failures in a row, no token between
STRIKES_TO_BLAME = 3     # ... and once more while it was the only suspect running


async def start_executor(config: Config) -> tuple[Executor, KVCacheConfig]:
    """A started executor with its KV cache sized, allocated and warmed up; on any error
    (or cancellation) nothing it started is left."""
    executor = await Executor.create(config)
    try:
        return executor, await executor.initialize_kv_cache()
    except BaseException:
        await executor.shutdown(grace_s=0.0)
        raise


@dataclass(frozen=True)
class RestartRecord:
    """One executor restart, as it was logged: why, and how long recovery took."""

    cause: str                  # the executor's error, naming rank, pid and signal
    rank: int | None            # the rank that died, when one did
    pid: int | None
    signal: str | None          # e.g. "SIGKILL", when a signal killed it
    recovered_s: float          # from the failure to the fresh executor taking steps
    backoff_s: float            # of which waited on purpose
    num_resumed: int            # requests resumed by recompute
    blamed: tuple[str, ...]     # request ids failed alone with RequestFailedError


class RestartPolicy:
    """The restart budget: at most ``max_restarts`` restarts within any ``window_s``."""

    def __init__(self, config: RestartConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._times: list[float] = []      # when each restart in the window began

    def try_begin(self) -> bool:
        """Whether a restart may begin now; if so it is counted."""
        if not self.config.enabled:
            return False
        now = self._clock()
        self._times = [t for t in self._times if now - t < self.config.window_s]
        if len(self._times) >= self.config.max_restarts:
            return False
        self._times.append(now)
        return True

    def backoff_s(self) -> float:
        """Wait before the k-th restart in the window: ``backoff_s * 2**(k-1)``, capped."""
        k = max(1, len(self._times))
        return min(self.config.backoff_s * 2 ** (k - 1), MAX_BACKOFF_S)

    def describe(self) -> str:
        return f"{self.config.max_restarts} restarts within {self.config.window_s:g} s"


class FailureAttribution:
    """Strikes per request: consecutive failures it was in flight at with no new token.

    What is attributable: a worker's death names a process, never a request,
    so a request is blamed only by repetition. A restart recomputes every
    request, so an input that crashes a worker crashes it again at the same
    position; an unlucky request that was merely in flight produces a token
    after the restart. ``STRIKES_TO_SUSPECT`` failures without progress make a
    request a suspect (``Request.isolated``: the scheduler runs one suspect at
    a time, so a further failure can point at one); one more strike while it
    was the only suspect running blames it.
    """

    def __init__(self) -> None:
        self._strikes: dict[str, tuple[int, int]] = {}   # req_id -> (strikes, outputs then)

    def strike(self, in_flight: Sequence[Request], live: set[str]) -> list[Request]:
        """Counts a failure against the requests ``in_flight``; returns those now blamed.

        Marks new suspects isolated. ``live`` are the engine's unfinished
        request ids (records of the others are dropped).
        """
        self._strikes = {r: s for r, s in self._strikes.items() if r in live}
        blamed = []
        for req in in_flight:
            outputs = len(req.output_token_ids)
            count, then = self._strikes.get(req.req_id, (0, -1))
            count = count + 1 if then == outputs else 1
            self._strikes[req.req_id] = (count, outputs)
            if count >= STRIKES_TO_BLAME:
                blamed.append(req)
            elif count >= STRIKES_TO_SUSPECT:
                req.isolated = True
        return blamed


class ExecutorSupervisor:
    """The engine's restart machinery: budget, attribution, and the executor swap.

    ``on_failure`` runs synchronously when the executor fails (before the
    engine loop sees any error) and decides; ``replace`` then does the slow
    part; ``finish`` logs the restart once, with its cause and recovery time.
    """

    def __init__(self, config: RestartConfig) -> None:
        self.policy = RestartPolicy(config)
        self.attribution = FailureAttribution()
        self.restarts: list[RestartRecord] = []
        self.blamed: list[Request] = []
        self._failed_at = 0.0
        self._cause: BaseException | None = None
        self._backoff_s = 0.0

    def on_failure(self, error: BaseException | None, in_flight: Sequence[Request],
                   live: set[str]) -> bool:
        """The executor failed with ``error`` while ``in_flight`` ran: restart or not?"""
        self._failed_at = time.monotonic()
        if not self.policy.try_begin():
            if self.policy.config.enabled and self.policy.config.max_restarts > 0:
                logger.error("executor failed and the restart budget (%s) is spent; every "
                             "stream ends with its error: %s", self.policy.describe(), error)
            return False
        self._cause = error
        self.blamed = self.attribution.strike(in_flight, live)
        return True

    def _name_the_death(self, failed: Executor) -> None:
        """When another rank reported the failure first (its collective lost the dead peer,
        or the ranks were judged diverged), the cause to log is the death behind it: the
        first worker that has exited, with its rank, pid and signal."""
        if isinstance(self._cause, ActorDiedError):
            return
        for ref in failed.refs:
            notice = getattr(ref, "notice_exit", None)
            if notice is not None:
                notice()  # waitpid(WNOHANG): records an exit the loop has not seen yet
            dead = getattr(ref, "dead", None)
            if isinstance(dead, ActorDiedError):
                self._cause = dead
                return

    def blame_error(self, req: Request) -> RequestFailedError:
        return RequestFailedError(
            f"request {req.req_id!r} was in flight at {STRIKES_TO_BLAME} executor failures in "
            f"a row without producing a token (the last time as the only suspect running); "
            f"it is failed so that it cannot take the engine down again. Last failure: "
            f"{self._cause}")

    async def replace(self, failed: Executor, config: Config) -> tuple[Executor, KVCacheConfig]:
        """Shut ``failed`` down completely, then start a fresh executor from ``config``.

        A start that fails is retried while the budget allows; then its error is raised.
        """
        self._name_the_death(failed)
        await failed.shutdown(grace_s=0.0)   # kills every worker: some may hang in a collective
        self._backoff_s = 0.0
        while True:
            wait = self.policy.backoff_s()
            self._backoff_s += wait
            await asyncio.sleep(wait)
            try:
                return await start_executor(config)
            except Exception as exc:
                logger.error("restarting the executor failed: %s", exc)
                if not self.policy.try_begin():
                    raise

    def finish(self, num_resumed: int) -> RestartRecord:
        """Logs the restart once: its cause (rank, pid, signal) and the time to recover."""
        cause = self._cause
        rank = pid = sig = None
        if isinstance(cause, ActorDiedError):
            rank, pid = cause.rank, cause.pid
            if cause.exitcode is not None and cause.exitcode < 0:
                try:
                    sig = signal.Signals(-cause.exitcode).name
                except ValueError:
                    sig = str(-cause.exitcode)
        record = RestartRecord(
            cause=str(cause), rank=rank, pid=pid, signal=sig,
            recovered_s=time.monotonic() - self._failed_at, backoff_s=self._backoff_s,
            num_resumed=num_resumed, blamed=tuple(r.req_id for r in self.blamed))
        self.restarts.append(record)
        self.blamed = []
        logger.warning(
            "executor restart %d (budget: %s) after: %s; recovered in %.2f s (back-off "
            "%.2f s); %d request(s) resume by recompute%s", len(self.restarts),
            self.policy.describe(), record.cause, record.recovered_s, record.backoff_s,
            num_resumed, f"; failed alone: {list(record.blamed)}" if record.blamed else "")
        return record
