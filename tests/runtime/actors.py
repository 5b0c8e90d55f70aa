"""A runtime-level test actor (no Worker, no torch): counts what actually ran."""

from __future__ import annotations

import os
import time

from actorexec.runtime import Actor, expose


class Counter(Actor):
    def __init__(self, start: int) -> None:
        super().__init__()
        self.count = start

    @expose
    def incr(self, by: int) -> int:
        self.count += by
        return self.count

    @expose
    def echo(self, data: bytes) -> bytes:
        return data

    @expose
    def ring_core(self) -> str:
        """Which ring implementation this process runs (shm_ring_compiled.py)."""
        from actorexec.runtime.transport import shm_ring_compiled

        return "compiled" if shm_ring_compiled.COMPILED else "python"

    @expose
    def pid(self) -> int:
        return os.getpid()

    @expose(thread=True)
    def nap(self, seconds: float) -> float:
        """Holds the work thread (a long step) while the loop keeps serving."""
        time.sleep(seconds)
        return seconds

    @expose
    def break_replies(self) -> None:
        """Fault injection: from now on this process's reply socket raises, as a ZeroMQ
        error while sending would (the socket and process stay real)."""
        import errno
        import gc

        import zmq

        from actorexec.runtime.server import ActorServer

        server = next(o for o in gc.get_objects() if isinstance(o, ActorServer))

        def broken(*args: object) -> None:
            raise zmq.ZMQError(errno.ENOTSUP)

        server.transport.send_to = broken  # type: ignore[method-assign]

    def secret(self) -> None:  # not exposed: must never run from outside
        self.count = -1000
