"""Actor processes: spawning, a ready handshake, a death watch, and shutdown.

Ownership starts with the process: :meth:`ProcessRef.spawn` connects the
DEALER first, then starts the process and builds its ref with no ``await`` in
between, so a caller cancelled at any point either has no process or has the
ref that kills it.

The death watch puts the process *sentinel* (a pipe closed by the kernel when
the child exits) on the event loop with ``add_reader``: no polling thread, and
every pending future fails as soon as the loop sees the close (well under the
1 s contract), with an ActorDiedError naming rank, pid and exit code/signal.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from collections.abc import Sequence
from typing import Any

import msgspec

from actorexec.protocol.errors import ActorClosedError, ActorDiedError

from .child import FAILED_EXIT_CODE, ExitCleanup, child_main
from .refs import DeathCallback
from .socket_ref import SocketRef
from .transport import connect_dealer, resolve_backend

logger = logging.getLogger("actorexec.runtime.process")


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    if exitcode == FAILED_EXIT_CODE:
        return f"exit code {exitcode} (failed while starting or serving; see its stderr)"
    return f"exit code {exitcode}"


class ProcessRef(SocketRef):
    """A ref to an actor in a child process, over a DEALER socket. Why: one owner of the
    process, its socket and its pending calls, so a death fails exactly those calls."""

    def __init__(self, process: Any, transport: Any, rank: int,
                 on_death: DeathCallback | None = None) -> None:
        self.process = process
        self.pid: int = process.pid
        super().__init__(transport, rank, on_death)
        self.exited = asyncio.Event()
        self._loop.add_reader(process.sentinel, self._on_exit)

    @property
    def name(self) -> str:
        return f"rank {self.rank} (pid {self.pid})"

    def died(self, cause: str, exitcode: int | None = None) -> ActorDiedError:
        return ActorDiedError(f"worker {self.name} {cause}", rank=self.rank, pid=self.pid,
                              exitcode=exitcode)

    def kill_actor(self) -> None:
        self.process.kill()

    @classmethod
    async def spawn(cls, actor_path: str, init_kwargs: dict[str, Any], rank: int, endpoint: str,
                    backend: str = "auto", on_death: DeathCallback | None = None,
                    use_uvloop: bool | None = None, private_dir: str | None = None,
                    shared_files: Sequence[str] = ()) -> ProcessRef:
        """Start ``actor_path`` (``"module:QualName"``) in a spawned process; returns its ref
        as soon as the process exists (then :meth:`wait_ready`).

        ``init_kwargs`` go msgpack-encoded (no pickle of our objects) and decode
        typed against the actor's ``__init__`` hints in the child. If the parent
        dies, the child removes its socket file and ``shared_files`` and, the
        last one out, ``private_dir``.
        """
        backend = resolve_backend(backend)
        own = (endpoint.removeprefix("ipc://"),) if endpoint.startswith("ipc://") else ()
        cleanup = ExitCleanup(own_files=own, shared_files=tuple(shared_files),
                              directory=private_dir)
        process = new_child_process(actor_path, init_kwargs, rank, endpoint, backend,
                                    use_uvloop, cleanup)
        transport = await connect_dealer(endpoint, backend)  # before the process exists
        try:
            process.start()
        except BaseException:
            transport.close()
            raise
        return cls(process, transport, rank, on_death)  # no await since start(): owned

    def notice_exit(self) -> bool:
        """Handles the process's exit now if it has exited, without waiting for the loop to
        see the sentinel; True if it has. Why: a peer rank's reply may report the death
        (a collective that lost this rank) before the loop has seen it; the caller checks
        first, so the step fails naming the dead rank."""
        if self.exited.is_set():
            return True
        if self.process.exitcode is None:  # waitpid(WNOHANG): never blocks
            return False
        self._on_exit()
        return True

    def _on_exit(self) -> None:
        if self.exited.is_set():
            return
        self._loop.remove_reader(self.process.sentinel)
        self.process.join(0.1)  # reap: the sentinel closes just before the exit status is ready
        code = self.process.exitcode
        self.exited.set()
        if self._closing:
            self.fail_pending(ActorClosedError(f"actor rank {self.rank} was shut down"))
            return
        reason = f": {self._fatal_reason}" if self._fatal_reason else ""
        self.declare_dead(self.died(f"died: {describe_exit(code)}{reason}", exitcode=code))

    async def close(self, grace_s: float = 5.0) -> None:
        """Wait up to ``grace_s`` for the process to exit (after its shutdown call), then kill."""
        self._closing = True
        try:
            if not self.exited.is_set():
                try:
                    await asyncio.wait_for(self.exited.wait(), grace_s)
                except TimeoutError:
                    logger.warning("rank %d (pid %d) ignored shutdown; killing",
                                   self.rank, self.pid)
        finally:
            self.kill_now()

    def kill_now(self) -> None:
        """Synchronous last resort (also on cancellation): kill, reap, close the socket."""
        self._closing = True
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(2.0)
        if not self.exited.is_set():
            self._loop.remove_reader(self.process.sentinel)
            self.exited.set()
        self.close_socket()


def new_child_process(actor_path: str, init_kwargs: dict[str, Any], rank: int, endpoint: Any,
                      backend: str, use_uvloop: bool | None, cleanup: ExitCleanup) -> Any:
    """The (not yet started) spawned process that serves ``actor_path`` on ``endpoint``."""
    payload = msgspec.msgpack.encode(init_kwargs)
    ctx = multiprocessing.get_context("spawn")
    # daemon: if the parent exits without shutdown, multiprocessing terminates it.
    return ctx.Process(target=child_main, name=f"actorexec-rank{rank}", daemon=True,
                       args=(actor_path, payload, endpoint, rank, backend, os.getpid(),
                             use_uvloop, cleanup))


async def spawn_actor(actor_path: str, init_kwargs: dict[str, Any], rank: int, endpoint: str,
                      backend: str = "auto", start_timeout_s: float = 60.0,
                      on_death: DeathCallback | None = None,
                      use_uvloop: bool | None = None) -> ProcessRef:
    """Start ``actor_path`` in a spawned process and wait until it serves (or kill it)."""
    ref = await ProcessRef.spawn(actor_path, init_kwargs, rank, endpoint, backend, on_death,
                                 use_uvloop)
    try:
        await ref.wait_ready(start_timeout_s)
    except BaseException:
        ref.kill_now()
        raise
    return ref
