"""The entry point of a spawned actor process.

The child ties its life to the parent's twice over: ``PR_SET_PDEATHSIG``
(Linux; SIGKILL when the parent dies) and a watchdog thread that exits when
``getppid()`` changes (other platforms, or a parent that died before prctl).
It ignores SIGINT: Ctrl-C goes to the parent, which shuts workers down.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

from actorexec.protocol.codec import MethodSpec

from .loop import run

PR_SET_PDEATHSIG = 1
START_FAILED_EXIT_CODE = 3


def import_path(path: str) -> Any:
    """``"module:Qual.Name"`` → the object."""
    module, sep, qualname = path.partition(":")
    if not sep or not qualname:
        raise ValueError(f"expected 'module:QualName', got {path!r}")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watchdog below still works
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def child_main(actor_path: str, init_payload: bytes, endpoint: str, rank: int, backend: str,
               parent_pid: int, use_uvloop: bool | None) -> None:
    """Build the actor from its typed ``__init__`` arguments and serve it until shutdown."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=os.environ.get("ACTOREXEC_LOG_LEVEL", "WARNING"),
                        format=f"%(asctime)s rank{rank} %(name)s %(levelname)s: %(message)s")
    try:
        run(_serve(actor_path, init_payload, endpoint, rank, backend), use_uvloop=use_uvloop)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(START_FAILED_EXIT_CODE)


async def _serve(actor_path: str, init_payload: bytes, endpoint: str, rank: int,
                 backend: str) -> None:
    from .server import ActorServer

    cls = import_path(actor_path)
    kwargs = MethodSpec(cls.__init__, "__init__").decode_args([init_payload])
    actor = cls(**kwargs)
    server = await ActorServer.bind(actor, endpoint, rank, backend)
    await server.serve()
