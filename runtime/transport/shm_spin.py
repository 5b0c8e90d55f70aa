"""The short adaptive wait: poll the ring a little before sleeping on its eventfd.

Each site that waits for a message (a worker's work thread or loop for the
next call, the executor's loop for replies) remembers how long its last few
waits took. If they were short, the next wait first polls the ring for
about twice that long, at most ``max_s``, and only then sleeps on the
eventfd; if they were long (a step every 5 ms, an idle executor), it sleeps at
once, so an idle rank uses no CPU at all. Why: waking a sleeping thread costs
20-35 µs on an idle core of a GPU host (measured, ``docs/runtime.md``), and
the core it runs on comes back cold; a back-to-back caller is answered
without either. ``ACTOREXEC_SHM_SPIN_US`` sets a worker's ``max_s`` in
microseconds, ``ACTOREXEC_SHM_CALLER_SPIN_US`` the executor's (0 turns the wait
off; children inherit them).

Paced waits: when the waits are long but regular (an engine sends a step
every GPU step, ~5 ms), the next message's arrival is predictable. A worker's
work thread then sets a timer for just before it (:meth:`AdaptiveSpin.wake_at`)
and, woken by it, sleeps again on the eventfd: it does not poll. What that
buys: after 5 ms of sleep an idle vCPU of a GPU host is halted, and the
message's wake-up pays for bringing it back (55-174 µs, measured); woken
ahead by its own timer, the core has been running just before the message
comes, and the eventfd's wake-up costs less (on bare metal, the deep
C-state's exit is paid ahead the same way). The cost is one timer wake per
message, no polling: the worker's CPU at a step every 5 ms stayed within a
point of a core of what it is without (``docs/runtime.md`` has the figures).
The timer is set only when the last waits agree to within ``PACE_SPREAD_S``,
so there is none without a rhythm or without traffic.
Arrivals are taken from the ring's publish time, not from when a sleeping
reader woke, so the prediction does not drift late by the wake-up it exists to
hide. ``ACTOREXEC_SHM_PACE=0`` turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Callable

WORKER_MAX_US = 400.0
# After a polling window ends without a message, one more look this much later: a backstop
# should a processor order the flag protocol's store and load more weakly than x86 does
# (``shm_ring.py``); costs one timer per window, none while idle.
BACKSTOP_S = 0.01
CALLER_MAX_US = 1000.0  # a caller waits for a whole round trip: its window may be longer
_SAMPLES = 8
# Paced waits: recent arrivals must agree to within this (the 2nd-earliest to the
# 2nd-latest of the last 8), and the timer is set this long before the 2nd-earliest.
PACE_SPREAD_S = 300e-6
PACE_LEAD_S = 20e-6


def pacing_enabled() -> bool:
    """Whether a worker's work thread paces its waits: unless ``ACTOREXEC_SHM_PACE=0``."""
    return os.environ.get("ACTOREXEC_SHM_PACE", "1") != "0"


def max_spin_s(caller: bool = False) -> float:
    """The longest short wait for a waiting site (the executor's if ``caller``). By default 0
    only when this process may use a single core (a poller would then always hold the
    core its peer needs). With fewer cores than waiters (2 ranks and the executor on 2
    cores) polling still pays, because a poller yields the core (``sched_yield``) on
    every turn and the windows adapt to zero when waits are long: measured on a 2-core
    host, 2 ranks (with the polling flag), 256-request steps back-to-back 337 -> 288 µs,
    every 5 ms 622 -> 434 µs, worker CPU at 5 ms gaps 4.8 -> 3.9%
    (``benchmarks/README.md``). The environment variable, when set, is taken as it is."""
    name, default = (("ACTOREXEC_SHM_CALLER_SPIN_US", CALLER_MAX_US) if caller
                     else ("ACTOREXEC_SHM_SPIN_US", WORKER_MAX_US))
    if name in os.environ:
        return float(os.environ[name]) / 1e6
    if len(os.sched_getaffinity(0)) < 2:
        return 0.0
    return default / 1e6


class AdaptiveSpin:
    """How long to poll before sleeping, from how long recent waits took."""

    def __init__(self, max_s: float, paced: bool = False) -> None:
        self.max_s = max_s
        self.paced = paced
        self._waits: deque[float] = deque(maxlen=_SAMPLES)
        self._since: float | None = None
        self._window = 0.0  # from the waits so far (computed as each arrives, not per ask)
        self._lead: float | None = None  # paced: from a wait's start to its timer

    def waiting(self) -> None:
        """A wait begins (a reply just left, or a call was just sent)."""
        self._since = time.perf_counter()

    def arrived(self, at: float | None = None) -> None:
        """What we waited for arrived (``at``: when, in ``time.perf_counter()`` seconds, if
        known better than now, e.g. the ring's publish time)."""
        if self._since is not None:
            now = time.perf_counter()
            came = now if at is None or not self._since <= at <= now else at  # (stale: now)
            self._waits.append(max(0.0, came - self._since))
            self._since = None
            self._window = self._new_window()
            self._lead = None if self._window else self._new_lead()

    def window(self) -> float:
        """Seconds to poll before sleeping: 0 unless recent waits were short."""
        return self._window

    def wake_at(self) -> float | None:
        """For a wait that began with :meth:`waiting`: when (``time.perf_counter()``
        seconds) to be awake, just before the next arrival, if recent waits were long but
        regular; else None (sleep until woken)."""
        if self._lead is None or self._since is None:
            return None
        return self._since + self._lead

    def _new_lead(self) -> float | None:
        if not self.paced or len(self._waits) < _SAMPLES:
            return None
        ordered = sorted(self._waits)
        early, late = ordered[1], ordered[-2]  # one outlier either way is ignored
        if late - early > PACE_SPREAD_S:
            return None
        return max(0.0, early - PACE_LEAD_S)

    def _new_window(self) -> float:
        if self.max_s <= 0 or len(self._waits) < 3:
            return 0.0
        typical = sorted(self._waits)[len(self._waits) // 2]
        if typical > self.max_s / 2:
            return 0.0
        return min(self.max_s, 2 * typical)


def spin_on_thread(window_s: float, ready: Callable[[], bool]) -> bool:
    """Polls ``ready()`` for up to ``window_s`` on a plain thread, yielding the CPU (and the
    GIL) between polls; True as soon as it is."""
    deadline = time.perf_counter() + window_s
    while time.perf_counter() < deadline:
        if ready():
            return True
        os.sched_yield()
    return ready()


class LoopSpin:
    """Polls ``ready()`` once per loop iteration for up to a window, then calls
    ``on_ready()``; the loop keeps running its other work meanwhile (each turn is an
    iteration with a zero-timeout select).

    ``polling(flag)`` tells the ring's writers whether this site polls (so they may skip
    its eventfd): set when a window starts; cleared, with a last look at the ring,
    whenever polling ends (``shm_ring.py`` has the protocol)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ready: Callable[[], bool],
                 on_ready: Callable[[], None], more: Callable[[], bool] | None = None,
                 polling: Callable[[bool], None] | None = None) -> None:
        self._loop = loop
        self._ready = ready
        self._on_ready = on_ready
        self._more = more  # keep polling after on_ready while this says so
        self._polling = polling
        self._active = False  # the polling flag is set
        self._deadline = 0.0
        self._handle: asyncio.Handle | None = None
        self._backstop: asyncio.TimerHandle | None = None

    def start(self, window_s: float) -> None:
        if window_s <= 0:
            return
        if self._backstop is not None:  # (inline: once per message)
            self._cancel_backstop()
        self._deadline = time.perf_counter() + window_s
        if self._handle is None:
            if not self._active and self._polling is not None:
                self._polling(True)
                self._active = True
            self._handle = self._loop.call_soon(self._turn)

    def stop(self) -> None:
        """Stops for good (no last look): the owner is closing."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._cancel_backstop()
        if self._active:
            self._active = False
            with contextlib.suppress(ValueError):  # the ring already unmapped
                self._polling(False)  # type: ignore[misc]

    def _turn(self) -> None:
        self._handle = None
        if self._ready():
            self._on_ready()
            if self._handle is not None:  # on_ready started a new window
                return
            if self._more is None or not self._more():
                # Whatever on_ready woke (the caller's coroutine) runs first, and may send
                # the next call, which keeps us polling: ending costs nothing then.
                self._handle = self._loop.call_soon(self._wind_down)
                return
        if time.perf_counter() < self._deadline:
            os.sched_yield()  # whoever we wait for may need this core
            self._handle = self._loop.call_soon(self._turn)
            return
        self._finish()

    def _wind_down(self) -> None:
        self._handle = None
        if self._more is not None and self._more() and time.perf_counter() < self._deadline:
            self._turn()
        else:
            self._finish()

    def _finish(self) -> None:
        """Polling ends: clear the flag (with a fence), then one last look, since a writer
        that saw the flag set did not signal."""
        if not self._active:
            return
        self._active = False
        self._polling(False)  # type: ignore[misc]
        if self._ready():
            self._on_ready()
        elif self._handle is None:
            self._backstop = self._loop.call_later(BACKSTOP_S, self._look_again)

    def _look_again(self) -> None:
        self._backstop = None
        if self._ready():
            self._on_ready()

    def _cancel_backstop(self) -> None:
        if self._backstop is not None:
            self._backstop.cancel()
            self._backstop = None
