"""Teardown shared by the shared-memory ring tests that run a real work thread."""

from __future__ import annotations

import asyncio

from actorexec.runtime.transport.shm_fds import MappedRing, close_fds
from actorexec.runtime.transport.shm_link import RingSender
from actorexec.runtime.work_thread import WorkThread


async def close_thread_then_ring(thread: WorkThread, mapped: MappedRing,
                                 sender: RingSender | None, *fds: int) -> None:
    """Stops the work thread first and lets it leave its poll, then closes the sender, the
    ring and the eventfds (unmapping a ring the thread still reads would crash it)."""
    thread.close()
    await asyncio.sleep(0.05)
    if sender is not None:
        sender.close()
    mapped.close()
    close_fds(*fds)
