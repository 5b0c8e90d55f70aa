"""The entry point of a spawned actor process.

The child ties its life to the parent's twice over: ``PR_SET_PDEATHSIG``
(Linux) delivers SIGTERM when the parent dies, and a watchdog thread polls
``getppid()`` (other platforms, a parent that died before prctl, or a loop
too busy to run the signal handler). Either way the child removes what it
owns before it goes: its socket file, files it shares with its siblings
(the rendezvous store), and the parent's private directory once it is empty,
so the last worker out removes it. SIGTERM rather than SIGKILL because a
killed process runs no clean-up. The child ignores SIGINT: Ctrl-C goes to the
parent, which shuts workers down.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from actorexec.protocol.codec import MethodSpec

from .loop import run
from .transport.shm_channel import ShmEndpoint

PR_SET_PDEATHSIG = 1
FAILED_EXIT_CODE = 3
ORPHANED_EXIT_CODE = 4
_WATCH_INTERVAL_S = 0.2
_REPARENT_WAIT_S = 0.2


def import_path(path: str) -> Any:
    """``"module:Qual.Name"`` → the object."""
    module, sep, qualname = path.partition(":")
    if not sep or not qualname:
        raise ValueError(f"expected 'module:QualName', got {path!r}")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ExitCleanup:
    """What a child removes when it exits: always ``own_files``; if its parent is gone,
    also ``shared_files`` and ``directory`` (if empty by then: the last child out)."""

    own_files: tuple[str, ...] = ()
    shared_files: tuple[str, ...] = ()
    directory: str | None = None

    def run(self, parent_gone: bool) -> None:
        files = self.own_files + (self.shared_files if parent_gone else ())
        for path in files:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if parent_gone and self.directory is not None:
            with contextlib.suppress(OSError):  # ENOTEMPTY: a sibling is still on its way out
                os.rmdir(self.directory)


class _ParentWatch:
    """Exits this process, cleaned up, when the parent dies (or on SIGTERM)."""

    def __init__(self, parent_pid: int, cleanup: ExitCleanup) -> None:
        self.parent_pid = parent_pid
        self.cleanup = cleanup
        self._lock = threading.RLock()  # a second SIGTERM may re-enter the handler

    def arm(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):  # not Linux: the watchdog thread still works
            pass
        if self.parent_gone():  # the parent died before prctl took effect
            self.exit_orphaned()
        threading.Thread(target=self._watch, name="parent-watchdog", daemon=True).start()

    def parent_gone(self) -> bool:
        return os.getppid() != self.parent_pid

    def exit_orphaned(self) -> None:
        with self._lock:  # the signal handler and the watchdog may both get here
            self.cleanup.run(parent_gone=True)
            os._exit(ORPHANED_EXIT_CODE)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        # PDEATHSIG may arrive before getppid() shows the new parent (seen here): wait a
        # moment before deciding that someone else sent SIGTERM.
        deadline = time.monotonic() + _REPARENT_WAIT_S
        while time.monotonic() < deadline:
            if self.parent_gone():
                self.exit_orphaned()
            time.sleep(0.005)
        with self._lock:  # someone else terminates us: clean up, then die by the signal
            self.cleanup.run(parent_gone=False)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    def _watch(self) -> None:
        while not self.parent_gone():
            time.sleep(_WATCH_INTERVAL_S)
        self.exit_orphaned()


def child_main(actor_path: str, init_payload: bytes, endpoint: str | ShmEndpoint, rank: int,
               backend: str, parent_pid: int, use_uvloop: bool | None,
               cleanup: ExitCleanup) -> None:
    """Build the actor from its typed ``__init__`` arguments and serve it until shutdown."""
    _ParentWatch(parent_pid, cleanup).arm()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=os.environ.get("ACTOREXEC_LOG_LEVEL", "WARNING"),
                        format=f"%(asctime)s rank{rank} %(name)s %(levelname)s: %(message)s")
    try:
        run(_serve(actor_path, init_payload, endpoint, rank, backend), use_uvloop=use_uvloop)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        cleanup.run(parent_gone=False)
        os._exit(FAILED_EXIT_CODE)


async def _serve(actor_path: str, init_payload: bytes, endpoint: str | ShmEndpoint, rank: int,
                 backend: str) -> None:
    from .server import ActorServer
    from .shm_server import ShmActorServer

    cls = import_path(actor_path)
    kwargs = MethodSpec(cls.__init__, "__init__").decode_args([init_payload])
    actor = cls(**kwargs)
    if isinstance(endpoint, ShmEndpoint):
        server: ActorServer = ShmActorServer.attach(actor, endpoint)
    else:
        server = await ActorServer.bind(actor, endpoint, rank, backend)
    await server.serve()
