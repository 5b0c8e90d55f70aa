"""An actor's single work thread: jobs run one at a time, in submission order.

Why not a ``ThreadPoolExecutor`` with ``run_in_executor``: every job there
ends by waking the event loop (``call_soon_threadsafe``) to complete an asyncio
future, two more wake-ups per call. Here a job says what happens when it ends:
the mailbox answers the call from this thread when it may (no loop wake-up at
all) and wakes the loop only when it must. Measured on the 2-core host with a
thread-method round trip over shared memory: the loop's wake-up after each step
cost ~45 µs (GIL hand-over and the loop's own work), on the critical path
whenever the cores are shared. A daemon thread, so a process whose thread is
stuck in a step still exits (a pool's threads are joined at exit).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("actorexec.runtime.actor")

Job = Callable[[], None]


class WorkThread:
    """Runs jobs on one thread, in order. ``close`` drops jobs not started yet."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, job: Job) -> None:
        """Queue ``job`` (it must not raise: exceptions are logged and dropped)."""
        if self._closed:
            raise RuntimeError(f"{self._name} is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        self._jobs.put(job)

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
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None and not self._closed:
            try:
                job()
            except BaseException:  # a job's own errors are its business; never kill the thread
                logger.exception("%s: a job raised", self._name)


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)
