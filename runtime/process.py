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
import itertools
import logging
import multiprocessing
import os
import signal
from collections.abc import Sequence
from typing import Any

import msgspec

from actorexec.protocol.codec import EnvelopeCodec, PayloadDecoder
from actorexec.protocol.envelopes import Call, Failure, Ready, Result
from actorexec.protocol.errors import ActorClosedError, ActorDiedError, ProtocolError

from .actor import READY_METHOD
from .child import FAILED_EXIT_CODE, ExitCleanup, child_main
from .errors import ActorFatalError, error_from, type_name
from .refs import ActorRef, DeathCallback, PreparedCall, ReplyFuture, arm_deadline
from .transport import TransportClosed, connect_dealer, resolve_backend

logger = logging.getLogger("actorexec.runtime.process")
_FATAL_TYPE = type_name(ActorFatalError("x"))


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


class ProcessRef(ActorRef):
    """A ref to an actor in a child process, over a DEALER socket. Why: one owner of the
    process, its socket and its pending calls, so a death fails exactly those calls."""

    def __init__(self, process: Any, transport: Any, rank: int,
                 on_death: DeathCallback | None = None) -> None:
        self.process = process
        self.transport = transport
        self.rank = rank
        self.pid: int = process.pid
        self.on_death = on_death
        self._codec = EnvelopeCodec()
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Any], PayloadDecoder]] = {}
        self._loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self.exited = asyncio.Event()
        self.dead: ActorDiedError | None = None
        self._fatal_reason: str | None = None  # an ActorFatalError the actor reported
        self._closing = False
        self._loop.add_reader(process.sentinel, self._on_exit)
        # Owned by this ref: cancelled in kill_now; if it fails, the actor is lost to us.
        self._recv_task = asyncio.create_task(self._recv_loop(), name=f"ref-recv-{rank}")
        self._recv_task.add_done_callback(self._on_recv_exit)

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

    async def wait_ready(self, timeout_s: float) -> None:
        self.transport.send([self._codec.encode(Call(0, READY_METHOD))])
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"actor rank {self.rank} (pid {self.pid}) did not become ready "
                               f"within {timeout_s} s") from None

    def submit(self, prepared: PreparedCall, deadline: float | None = None) -> asyncio.Future[Any]:
        call = Call(next(self._ids), prepared.method, deadline)
        if self.accepts_calls:
            self.transport.send([self._codec.encode(call), *prepared.frames])
        return self.expect(call.call_id, prepared, deadline)

    @property
    def accepts_calls(self) -> bool:
        return self.dead is None and not self._closing

    def expect(self, call_id: int, prepared: PreparedCall,
               deadline: float | None) -> asyncio.Future[Any]:
        """The future of call ``call_id``, just sent to this actor; failed at once if this
        ref no longer accepts calls (then nothing was sent to it)."""
        fut: asyncio.Future[Any] = ReplyFuture(loop=self._loop)
        if not self.accepts_calls:
            fut.set_exception(self.dead or ActorClosedError(f"actor rank {self.rank} is closed"))
            return fut
        # Popped when the reply arrives (every call gets one, or fail_pending clears it): no
        # done-callback per call, which would cost a loop iteration per rank per step.
        self._pending[call_id] = (fut, prepared.spec.result_decoder)
        arm_deadline(fut, deadline, f"call {prepared.method!r} to rank {self.rank}")
        return fut

    @property
    def num_pending(self) -> int:
        """Calls sent and not yet answered (a timed-out call counts until its late reply)."""
        return len(self._pending)

    async def _recv_loop(self) -> None:
        while True:
            try:
                frames = await self.transport.recv()
            except TransportClosed:
                if self._closing:
                    return
                raise
            self._on_message(frames)

    def _on_recv_exit(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None or self._closing:
            return
        exc = task.exception()
        logger.error("rank %d: reply reader failed; killing the worker: %r", self.rank, exc)
        self._declare_dead(ActorDiedError(
            f"worker rank {self.rank} (pid {self.pid}) lost: its reply reader failed: {exc!r}",
            rank=self.rank, pid=self.pid))
        self.process.kill()

    def _on_message(self, frames: list[bytes]) -> None:
        try:
            env = self._codec.decode(frames[0])
        except ProtocolError as exc:
            logger.error("rank %d: undecodable reply: %s", self.rank, exc)
            return
        if isinstance(env, Ready):
            if not self._ready.done():
                self._ready.set_result(None)
            return
        if not isinstance(env, (Result, Failure)):
            logger.error("rank %d: unexpected %s from an actor", self.rank, type(env).__name__)
            return
        if isinstance(env, Failure) and env.exc_type == _FATAL_TYPE:
            self._fatal_reason = env.message
        if env.call_id == -1:
            logger.error("rank %d reported an undecodable frame: %s", self.rank, env.message)
            return
        entry = self._pending.pop(env.call_id, None)
        if entry is None or entry[0].done():
            return  # timed out earlier: the late reply is dropped
        fut, decoder = entry
        if isinstance(env, Failure):
            fut.set_exception(error_from(env))
            return
        try:
            fut.set_result(decoder.decode(frames[1:]))
        except ProtocolError as exc:
            fut.set_exception(exc)

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
        self._declare_dead(ActorDiedError(
            f"worker rank {self.rank} (pid {self.pid}) died: {describe_exit(code)}{reason}",
            rank=self.rank, pid=self.pid, exitcode=code))

    def _declare_dead(self, error: ActorDiedError) -> None:
        if self.dead is not None:
            return
        self.dead = error
        self.fail_pending(error)
        if not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()  # retrieved: wait_ready re-raises it if anyone waits
        if self.on_death is not None:
            self.on_death(self, error)

    def fail_pending(self, exc: BaseException) -> None:
        futs = [f for f, _ in self._pending.values()]
        self._pending.clear()
        for fut in futs:
            if not fut.done():
                fut.set_exception(exc)

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
        self._recv_task.cancel()
        self.transport.close()
        self.fail_pending(ActorClosedError(f"actor rank {self.rank} was shut down"))


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
