"""File descriptors of the shared-memory transport: memfd rings and eventfd wake-ups.

Why memfd: its memory has no name in ``/dev/shm`` (or anywhere else), so
nothing can be left behind whoever is killed: the kernel frees it when the
last process holding the fd or a mapping goes. The fds reach a spawned child
the way multiprocessing passes its own (``reduction.DupFd`` while the process
object is pickled for spawn): the same fd numbers, open in the child, and no
other process can open them.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from multiprocessing import reduction
from typing import Any

from .shm_ring import ShmRing, ring_bytes

_ONE = (1).to_bytes(8, "little")


class InheritedFd:
    """An fd that a spawned child inherits (only while multiprocessing spawns it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return _rebuild_fd, (reduction.DupFd(self.fd),)

    def __repr__(self) -> str:
        return f"InheritedFd({self.fd})"


def _rebuild_fd(dup: Any) -> InheritedFd:
    return InheritedFd(dup.detach())


def shm_available() -> bool:
    """memfd and eventfd exist here (Linux)."""
    return hasattr(os, "memfd_create") and hasattr(os, "eventfd")


def new_eventfd() -> int:
    """A non-blocking eventfd (a wake-up counter a loop can wait on)."""
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


def signal(fd: int) -> None:
    """Wakes whoever waits on eventfd ``fd``."""
    os.write(fd, _ONE)


def drain(fd: int) -> None:
    """Resets eventfd ``fd`` (non-blocking; nothing to reset is fine)."""
    with contextlib.suppress(BlockingIOError):
        os.read(fd, 8)


class MappedRing:
    """A ring in a memfd, mapped here. ``fd`` stays open until :meth:`close` (children
    inherit it at spawn). The mapping outlives :meth:`close` only while a message view
    is still alive somewhere; the kernel frees the memory with the last mapping."""

    def __init__(self, fd: int, capacity: int, readers: int, create: bool) -> None:
        self.fd = fd
        self.capacity = capacity
        self.readers = readers
        # Every page mapped now (MAP_POPULATE), in each process: a ring cycles through all
        # of its pages anyway, and a page first touched mid-message costs that message a
        # fault per process (~5 µs on a VM; a 256-request step spans two pages).
        self._map = mmap.mmap(fd, ring_bytes(capacity, readers),
                              flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        self.ring = ShmRing(self._map, capacity, readers, create)

    @classmethod
    def create(cls, name: str, capacity: int, readers: int) -> MappedRing:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, ring_bytes(capacity, readers))
            return cls(fd, capacity, readers, create=True)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self.fd < 0:
            return
        self.ring.release()
        with contextlib.suppress(BufferError):  # a view still alive: the GC unmaps it later
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1


def close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
