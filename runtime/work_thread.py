"""An actor's single work thread: jobs run one at a time, in submission order.

Why not a ``ThreadPoolExecutor`` with ``run_in_executor``: every job there
ends by waking the event loop (``call_soon_threadsafe``) to complete an asyncio
future. Here a job says what happens when it ends: the mailbox answers the
call from this thread when it may (no loop wake-up) and wakes the loop only
when it must. A transport may also let this thread take its calls straight
from the wire (:meth:`WorkThread.watch`): a step then costs one wake-up of
one thread, with the event loop asleep. Measured on an H200 host's idle
cores: each wake-up of a sleeping thread costs 20-35 µs, and the loop-to-thread
hand-off of a step cost ~49 µs. A daemon thread, so a process whose thread is
stuck in a step still exits (a pool's threads are joined at exit).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from .transport.shm_fds import drain, new_eventfd, signal
from .transport.shm_spin import BACKSTOP_S, AdaptiveSpin, spin_on_thread

logger = logging.getLogger("actorexec.runtime.actor")

Job = Callable[[], None]
# poll_once() -> True if it did something (look again before sleeping). Runs on the thread.
PollOnce = Callable[[], bool]


class WorkThread:
    """Runs jobs on one thread, in order; between jobs, an optional watched source."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: deque[Job] = deque()
        self._wake = new_eventfd()
        self._watch: _Watch | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._backstop_ms: float | None = None  # the next sleep's limit, after polling
        self._late = _LATE_START_S  # how late a timed sleep of ours ends, learnt (paced waits)
        self.paced_wakes = 0  # paced waits whose timer woke the thread before the message

    def submit(self, job: Job) -> None:
        """Queue ``job`` (it must not raise: exceptions are logged and dropped)."""
        if self._closed:
            raise RuntimeError(f"{self._name} is closed")
        self._jobs.append(job)
        self._start()
        signal(self._wake)

    def watch(self, fd: int, poll_once: PollOnce, waiting: Callable[[], bool],
              spin: AdaptiveSpin | None = None,
              polling: Callable[[bool], None] | None = None,
              published: Callable[[], float] | None = None) -> None:
        """Between jobs, call ``poll_once`` whenever ``fd`` (an eventfd) is readable, and
        again while it returns True. Jobs always run first: ``poll_once`` must not take
        work that was submitted before it (:meth:`has_jobs`). With ``spin``, an idle
        thread first polls ``waiting()`` for the spin's window before it sleeps (or, for
        regular long waits, has a timer wake it just before the next message), and
        ``polling(True)`` / ``polling(False)`` (which must fence) bracket that polling so
        the source's writer may skip signalling ``fd`` meanwhile. ``published()``: when
        the source's latest message came (``time.perf_counter()`` seconds), which the
        spin learns from."""
        if self._closed:
            raise RuntimeError(f"{self._name} is closed")
        self._watch = _Watch(fd, poll_once, waiting, spin, polling, published)
        self._start()
        signal(self._wake)

    def has_jobs(self) -> bool:
        return bool(self._jobs)

    def offload(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """``fn(*args)`` on this thread; the loop's future of its result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def job() -> None:
            try:
                value = fn(*args)
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, fut, False, exc)
            else:
                loop.call_soon_threadsafe(_settle, fut, True, value)

        self.submit(job)
        return fut

    def close(self) -> None:
        """Stop after the job running now (if any); queued jobs are dropped."""
        self._closed = True
        self._jobs.clear()
        if self._thread is None:
            os.close(self._wake)
        else:
            signal(self._wake)  # the thread closes the fd on its way out

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        precise_timers()
        poller = select.poll()
        poller.register(self._wake, select.POLLIN)
        watched: int | None = None
        try:
            while not self._closed:
                while self._jobs and not self._closed:
                    self._call(self._jobs.popleft())
                watch = self._watch
                if watch is not None and watch.fd != watched:
                    poller.register(watch.fd, select.POLLIN)
                    watched = watch.fd
                if watch is not None and not self._closed and self._call(watch.poll_once):
                    continue  # it took something: jobs first, then look again
                spin = None if watch is None else watch.spin
                if spin is not None and self._spun(watch):  # type: ignore[arg-type]
                    continue
                ready = poller.poll(self._backstop_ms)  # sleeps with the GIL released
                if not ready and self._backstop_ms is not None:
                    self._backstop_ms = None  # one look (shm_spin.BACKSTOP_S), then sleep
                    if not (self._jobs or watch.waiting()):  # type: ignore[union-attr]
                        ready = poller.poll()
                if spin is not None:
                    _arrived(watch)  # type: ignore[arg-type]
                for fd, _ in ready:
                    drain(fd)
        finally:
            os.close(self._wake)

    def _spun(self, watch: _Watch) -> bool:
        """The short wait before sleeping; True if work came meanwhile. The eventfds are
        not reset: one signalled meanwhile only makes the next sleep return at once."""
        spin = watch.spin
        assert spin is not None
        spin.waiting()
        window = spin.window()

        def work() -> bool:
            return bool(self._jobs) or watch.waiting()

        if window <= 0:
            # Paced: woken ahead of the next message by a timer, then asleep on the
            # eventfd again (shm_spin.py says why); True if it came before the timer.
            wake = spin.wake_at()
            if wake is not None and self._sleep_until(wake - self._late, watch):
                _arrived(watch)
                return True  # (the fds are drained: look now)
            return False
        if watch.polling is None:
            came = spin_on_thread(window, work)
        else:
            watch.polling(True)
            came = spin_on_thread(window, work)
            watch.polling(False)  # fences: then the last look, before sleeping
            came = came or work()
            self._backstop_ms = None if came else BACKSTOP_S * 1000
        if came:
            spin.arrived()  # (found by polling: now is when it came)
        return came

    def _sleep_until(self, when: float, watch: _Watch) -> bool:
        """Sleeps until ``when`` (``time.perf_counter()``) unless a job or a message comes
        first (True). ``select`` for its microsecond timeout (``poll`` and ``epoll`` take
        milliseconds; with an fd beyond select's limit there is no paced sleep). A signal
        left from a message already taken (one published while the thread was still
        polling) is drained and slept through. Learns how late the sleep ends."""
        fds = [self._wake, watch.fd]
        if max(fds) >= _SELECT_LIMIT:
            return False  # select() cannot watch it, and poll's milliseconds are too coarse
        while (delay := when - time.perf_counter()) > 0:
            ready = select.select(fds, [], [], delay)[0]
            if not ready:
                self._learn_lateness(time.perf_counter() - when)
                self.paced_wakes += 1
                return False
            for fd in ready:
                drain(fd)
            if self._jobs or watch.waiting():
                # Past ``when`` and the timer had not fired: it is at least this late.
                self._learn_lateness(time.perf_counter() - when, at_least=True)
                return True
        return False

    def _learn_lateness(self, late: float, at_least: bool = False) -> None:
        """Up at once to a later timer (a timer that fires after the message is no use),
        down slowly (a timer that fires early only costs an earlier wake-up)."""
        if late > self._late:
            self._late = min(_LATE_MAX_S, late)
        elif not at_least:
            self._late += (late - self._late) / 16

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except BaseException:  # a job's own errors are its business; never kill the thread
            logger.exception("%s: a job raised", self._name)
            return False


class _Watch(NamedTuple):
    fd: int
    poll_once: PollOnce
    waiting: Callable[[], bool]
    spin: AdaptiveSpin | None
    polling: Callable[[bool], None] | None
    published: Callable[[], float] | None


def _arrived(watch: _Watch) -> None:
    """Tells the watch's spin that what it waited for came (when the source says it did)."""
    assert watch.spin is not None
    watch.spin.arrived(None if watch.published is None else watch.published())


def precise_timers() -> None:
    """This thread's timed sleeps end when asked, not up to 50 µs later (Linux's default
    timer slack), so a paced wait's timer need not be set that much earlier. Best
    effort."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux, or no libc to call
        pass


_PR_SET_TIMERSLACK = 29  # <linux/prctl.h>; the slack in nanoseconds
_SELECT_LIMIT = 1024  # FD_SETSIZE
# A timed sleep on an idle vCPU ends this late (timer slack, the wake-up); learnt per thread.
_LATE_START_S, _LATE_MAX_S = 50e-6, 300e-6



def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)
