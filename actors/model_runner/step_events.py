"""Opt-in CUDA events around each step's work on the compute stream: how long the GPU sat
idle between steps (``ACTOREXEC_STEP_EVENTS=1``; read by benchmarks/parallel_throughput.py).

An event recorded while the stream is idle completes when the host records it,
so ``start[k + 1] - end[k]`` is the time the compute stream had nothing queued
between two steps: the host's share of the step (with async scheduling it
should be ~0). Time the stream spends waiting on another stream inside a step
(a PP stage waiting for its input) counts as busy here. Cost when on: two event
records per step (~2-4 us of host time); nothing when off.
"""

from __future__ import annotations

import itertools
import os

import torch

ENV = "ACTOREXEC_STEP_EVENTS"
MAX_STEPS = 4096  # records kept (older ones dropped)


class StepEvents:
    """Start / end events of recent steps on the current (compute) stream."""

    def __init__(self, device: torch.device) -> None:
        self.enabled = device.type == "cuda" and os.environ.get(ENV) == "1"
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._start: torch.cuda.Event | None = None

    def start(self) -> None:
        if self.enabled:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()

    def end(self) -> None:
        if self.enabled and self._start is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            if len(self._events) >= MAX_STEPS:
                del self._events[: MAX_STEPS // 2]
            self._events.append((self._start, end))
            self._start = None

    def take(self) -> list[tuple[float, float]]:
        """(start ms, end ms) of each step since the last call, relative to the first start;
        waits for the last step to finish. Clears the record."""
        events, self._events = self._events, []
        if not events:
            return []
        events[-1][1].synchronize()
        origin = events[0][0]
        return [(origin.elapsed_time(s), origin.elapsed_time(e)) for s, e in events]


def idle_share(steps: list[tuple[float, float]]) -> float:
    """Share of the span from the first start to the last end with no step's work queued."""
    if len(steps) < 2:
        return 0.0
    idle = sum(max(0.0, nxt[0] - prev[1]) for prev, nxt in itertools.pairwise(steps))
    span = steps[-1][1] - steps[0][0]
    return idle / span if span > 0 else 0.0
