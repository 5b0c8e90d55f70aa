"""Host time per phase of a step (read, apply, prepare, launch, sample), for benchmarks.

Off by default (``ACTOREXEC_PHASE_TIMES=1`` turns it on): then each ``mark``
adds the time since the previous one to that phase's total. Used by
``benchmarks/decode_latency.py --profile`` to show where a step's host time goes.
"""

from __future__ import annotations

import time


class PhaseClock:
    """Accumulates seconds per named phase; every call is a no-op when disabled."""

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled
        self.totals: dict[str, float] = {}
        self.steps = 0
        self._last = 0.0

    def start(self) -> None:
        if self.enabled:
            self.steps += 1
            self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        if self.enabled:
            now = time.perf_counter()
            self.totals[phase] = self.totals.get(phase, 0.0) + now - self._last
            self._last = now

    def per_step_us(self) -> dict[str, float]:
        """Mean microseconds per step of each phase since the last reset."""
        return {k: v / max(1, self.steps) * 1e6 for k, v in self.totals.items()}

    def reset(self) -> None:
        self.totals, self.steps = {}, 0
