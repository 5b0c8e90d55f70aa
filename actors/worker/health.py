"""What a worker knows about its own progress: the health probe, the watchdog, the timeline.

Steps begin and end on the work thread (or when a reply-later future
completes); the health probe and the watchdog read them from the event loop.
A lock keeps the two sides consistent; it is held for a dict operation only.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass

import msgspec

from actorexec.protocol import StepTiming
from actorexec.runtime import ActorFatalError

TIMELINE_LEN = 4096  # step records kept for get_step_timeline (oldest half dropped when full)


class WorkerHealth(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A worker's answer to ``check_health``, given from its event loop (never queued
    behind a running step), so a busy worker and a hung one look different:
    ``busy_method`` is what its work thread runs now (None when idle) and
    ``busy_for_s`` for how long; ``steps_done`` grows while steps complete."""

    rank: int
    busy_method: str | None
    busy_for_s: float
    steps_done: int


@dataclass(frozen=True, slots=True)
class _Running:
    step_id: int
    started: float  # time.monotonic()


class StepTracker:
    """The steps one worker has begun and not finished, and those it has finished."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.steps_done = 0
        self._tokens = itertools.count()
        self._running: dict[int, _Running] = {}  # token -> step, in start order
        self._timeline: list[StepTiming] = []
        self._lock = threading.Lock()

    def begin(self, step_id: int) -> int:
        """Record a step's start; the token ends it (step ids need not be unique)."""
        token = next(self._tokens)
        with self._lock:
            self._running[token] = _Running(step_id, time.monotonic())
        return token

    def end(self, token: int) -> None:
        now = time.monotonic()
        with self._lock:
            step = self._running.pop(token)
            self.steps_done += 1
            if len(self._timeline) >= TIMELINE_LEN:
                del self._timeline[: TIMELINE_LEN // 2]
            self._timeline.append(StepTiming(step.step_id, self.rank, step.started, now))

    def take_timeline(self) -> list[StepTiming]:
        """Recent steps, oldest first; clears the record."""
        with self._lock:
            timeline, self._timeline = self._timeline, []
        return timeline

    def oldest_running(self) -> _Running | None:
        with self._lock:
            return next(iter(self._running.values()), None)

    async def watch(self, limit_s: float) -> None:
        """Raises ActorFatalError once a step has run longer than ``limit_s``.

        Checked a few times per limit (at most every second): the cost is one
        timer and one dict look-up, and a hung step is reported within ~1.25 limits.
        """
        interval = min(1.0, limit_s / 4)
        while True:
            await asyncio.sleep(interval)
            step = self.oldest_running()
            if step is None:
                continue
            ran = time.monotonic() - step.started
            if ran > limit_s:
                raise ActorFatalError(
                    f"worker rank {self.rank}: step {step.step_id} (execute_model) has run for "
                    f"{ran:.1f} s, past ParallelConfig.step_timeout_s={limit_s}; the worker "
                    "stops (a hung device or collective?)")
