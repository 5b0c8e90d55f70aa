"""SocketRef: the caller's side of an actor served on a ROUTER, over one DEALER socket.

What every ref to an actor in another process shares, whoever owns that
process: the ready handshake, calls and their typed replies, deadlines, and
failing every pending call once the actor is known to be gone. How a death is
*seen* is the subclass's part: a child's process sentinel (``ProcessRef``,
process.py), or the connection itself and a cluster manager's notice for a
process on another host (``RemoteRef``, remote_ref.py).
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import logging
from typing import Any

from actorexec.protocol.codec import EnvelopeCodec, PayloadDecoder
from actorexec.protocol.envelopes import Call, Failure, Ready, Result
from actorexec.protocol.errors import ActorClosedError, ActorDiedError, ProtocolError

from .actor import READY_METHOD
from .errors import ActorFatalError, error_from, type_name
from .refs import ActorRef, DeathCallback, PreparedCall, ReplyFuture, arm_deadline
from .transport import Transport, TransportClosed

logger = logging.getLogger("actorexec.runtime.socket_ref")
_FATAL_TYPE = type_name(ActorFatalError("x"))


class SocketRef(ActorRef):
    """A ref to an actor behind a ROUTER. Why one class: one owner of the socket and the
    pending calls, so a death (however it is seen) fails exactly those calls."""

    def __init__(self, transport: Transport, rank: int,
                 on_death: DeathCallback | None = None) -> None:
        self.transport = transport
        self.rank = rank
        self.on_death = on_death
        self._codec = EnvelopeCodec()
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Any], PayloadDecoder]] = {}
        self._loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self.dead: ActorDiedError | None = None
        self._fatal_reason: str | None = None  # an ActorFatalError the actor reported
        self._closing = False
        # Owned by this ref: cancelled in close_socket; if it fails, the actor is lost to us.
        self._recv_task = asyncio.create_task(self._recv_loop(), name=f"ref-recv-{rank}")
        self._recv_task.add_done_callback(self._on_recv_exit)

    # -- what subclasses say -----------------------------------------------------
    @property
    @abc.abstractmethod
    def name(self) -> str:
        """How errors name this actor, e.g. ``"rank 1 (pid 4242)"``."""

    @abc.abstractmethod
    def died(self, cause: str, exitcode: int | None = None) -> ActorDiedError:
        """The error every pending call fails with; ``cause`` completes the sentence
        ``"worker <name> <cause>"`` (e.g. ``"died: killed by signal SIGKILL"``)."""

    @abc.abstractmethod
    def kill_actor(self) -> None:
        """Make sure the actor's process is gone (its socket can no longer be trusted)."""

    # -- calls ---------------------------------------------------------------------
    async def wait_ready(self, timeout_s: float) -> None:
        self.transport.send([self._codec.encode(Call(0, READY_METHOD))])
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"actor {self.name} did not become ready within {timeout_s} s"
                               ) from None

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
        if deadline is not None:
            arm_deadline(fut, deadline, f"call {prepared.method!r} to rank {self.rank}")
        return fut

    @property
    def num_pending(self) -> int:
        """Calls sent and not yet answered (a timed-out call counts until its late reply)."""
        return len(self._pending)

    @property
    def fatal_reason(self) -> str | None:
        """Why the actor stopped, if it said so (an ActorFatalError it reported)."""
        return self._fatal_reason

    # -- replies -------------------------------------------------------------------
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
        self.declare_dead(self.died(f"lost: its reply reader failed: {exc!r}"))
        self.kill_actor()

    def _on_message(self, frames: list[bytes]) -> None:
        try:
            env = self._codec.decode(frames[0])
        except ProtocolError as exc:
            logger.error("rank %d: undecodable reply: %s", self.rank, exc)
            return
        if type(env) is Result:  # the common case first
            self._settle(env.call_id, frames)
            return
        if isinstance(env, Ready):
            if not self._ready.done():
                self._ready.set_result(None)
            return
        if not isinstance(env, Failure):
            logger.error("rank %d: unexpected %s from an actor", self.rank, type(env).__name__)
            return
        if env.exc_type == _FATAL_TYPE:
            self._fatal_reason = env.message
        if env.call_id == -1:
            logger.error("rank %d reported an undecodable frame: %s", self.rank, env.message)
            return
        entry = self._pending.pop(env.call_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(error_from(env))

    def _settle(self, call_id: int, frames: list[bytes]) -> None:
        """Call ``call_id`` returned: its future gets the value decoded from ``frames[1:]``."""
        entry = self._pending.pop(call_id, None)
        if entry is None or entry[0].done():
            return  # timed out earlier: the late reply is dropped
        fut, decoder = entry
        try:
            value = decoder.decode(frames[1:])
        except ProtocolError as exc:
            fut.set_exception(exc)
            return
        fut.set_result(value)

    # -- death and closing -----------------------------------------------------------
    def declare_dead(self, error: ActorDiedError) -> None:
        """The actor is gone: fail every pending call with ``error``, tell ``on_death`` once."""
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

    @property
    def closing(self) -> bool:
        return self._closing

    def close_socket(self) -> None:
        """Stop reading and close the DEALER; pending calls fail as shut down. Synchronous."""
        self._closing = True
        self._recv_task.cancel()
        self.transport.close()
        self.fail_pending(ActorClosedError(f"actor rank {self.rank} was shut down"))
