"""Actor processes: spawning with a ready handshake, a death watch, and shutdown.

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
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from actorexec.protocol.codec import EnvelopeCodec, MethodSpec, PayloadDecoder
from actorexec.protocol.envelopes import Call, Failure, Ready, Result
from actorexec.protocol.errors import ActorClosedError, ActorDiedError, ProtocolError

from .actor import READY_METHOD
from .child import START_FAILED_EXIT_CODE, child_main
from .errors import error_from
from .refs import ActorRef, PreparedCall, arm_deadline
from .transport import TransportClosed, connect_dealer, resolve_backend

logger = logging.getLogger("actorexec.runtime.process")
DeathCallback = Callable[["ProcessRef", ActorDiedError], None]


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    if exitcode == START_FAILED_EXIT_CODE:
        return f"exit code {exitcode} (failed while starting or serving; see its stderr)"
    return f"exit code {exitcode}"


# Silent calls outstanding before the ref asks for a confirming reply.
SILENT_FLUSH_AT = 64


def _ping() -> None:  # the wire signature of Actor.ping
    ...


_PING = PreparedCall("ping", MethodSpec(_ping, "ping"))

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
        # reply_on_success=False calls: resolved by any later reply (replies are ordered).
        self._silent: OrderedDict[int, asyncio.Future[Any]] = OrderedDict()
        self._flushing = False
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.exited = asyncio.Event()
        self.dead: ActorDiedError | None = None
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(process.sentinel, self._on_exit)
        self._recv_task = asyncio.create_task(self._recv_loop(), name=f"ref-recv-{rank}")

    async def wait_ready(self, timeout_s: float) -> None:
        self.transport.send([self._codec.encode(Call(0, READY_METHOD))])
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"actor rank {self.rank} (pid {self.pid}) did not become ready "
                               f"within {timeout_s} s") from None

    def submit(self, prepared: PreparedCall, deadline: float | None = None,
               reply_on_success: bool = True) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self._loop.create_future()
        if self.dead is not None or self._closing:
            fut.set_exception(self.dead or ActorClosedError(f"actor rank {self.rank} is closed"))
            return fut
        call = Call(next(self._ids), prepared.method, deadline, reply_on_success)
        self.transport.send([self._codec.encode(call), *prepared.frames])
        if reply_on_success:
            self._pending[call.call_id] = (fut, prepared.spec.result_decoder)
            fut.add_done_callback(lambda _: self._pending.pop(call.call_id, None))
            arm_deadline(fut, deadline, f"call {prepared.method!r} to rank {self.rank}")
        else:
            self._silent[call.call_id] = fut
            if len(self._silent) >= SILENT_FLUSH_AT and not self._flushing:
                self._confirm_silent()
        return fut

    @property
    def num_unconfirmed(self) -> int:
        """reply_on_success=False calls not yet known to have finished."""
        return len(self._silent)

    def _confirm_silent(self) -> None:
        """Ask for one ordered reply (a ``ping``): it confirms every silent call before it.

        Without this a rank that only ever gets silent calls (a non-output rank in
        a stream of steps) would keep one future per step for ever.
        """
        self._flushing = True

        def done(fut: asyncio.Future[Any]) -> None:
            self._flushing = False
            if not fut.cancelled():
                fut.exception()  # retrieved: a death fails the silent calls themselves

        self.submit(_PING).add_done_callback(done)

    async def _recv_loop(self) -> None:
        while True:
            try:
                frames = await self.transport.recv()
            except TransportClosed:
                return
            try:
                self._on_message(frames)
            except Exception:  # never let one bad reply stop the loop
                logger.exception("rank %d: bad reply dropped", self.rank)

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
        if env.call_id == -1:
            logger.error("rank %d reported an undecodable frame: %s", self.rank, env.message)
            return
        while self._silent and next(iter(self._silent)) < env.call_id:
            _, silent = self._silent.popitem(last=False)
            if not silent.done():
                silent.set_result(None)
        silent = self._silent.pop(env.call_id, None)
        if silent is not None:  # a reply_on_success=False call that failed
            if not silent.done() and isinstance(env, Failure):
                silent.set_exception(error_from(env))
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

    def _on_exit(self) -> None:
        self._loop.remove_reader(self.process.sentinel)
        self.process.join(0.1)  # reap: the sentinel closes just before the exit status is ready
        code = self.process.exitcode
        self.exited.set()
        if self._closing:
            self.fail_pending(ActorClosedError(f"actor rank {self.rank} was shut down"))
            return
        self.dead = ActorDiedError(
            f"worker rank {self.rank} (pid {self.pid}) died: {describe_exit(code)}",
            rank=self.rank, pid=self.pid, exitcode=code)
        self.fail_pending(self.dead)
        if not self._ready.done():
            self._ready.set_exception(self.dead)
        if self.on_death is not None:
            self.on_death(self, self.dead)

    def fail_pending(self, exc: BaseException) -> None:
        futs = [f for f, _ in self._pending.values()] + list(self._silent.values())
        self._pending.clear()
        self._silent.clear()
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


async def spawn_actor(actor_path: str, init_kwargs: dict[str, Any], rank: int, endpoint: str,
                      backend: str = "auto", start_timeout_s: float = 60.0,
                      on_death: DeathCallback | None = None,
                      use_uvloop: bool | None = None) -> ProcessRef:
    """Start ``actor_path`` (``"module:QualName"``) in a spawned process and wait until it serves.

    ``init_kwargs`` go msgpack-encoded (no pickle of our objects) and decode
    typed against the actor's ``__init__`` hints in the child.
    """
    backend = resolve_backend(backend)
    payload = msgspec.msgpack.encode(init_kwargs)
    ctx = multiprocessing.get_context("spawn")
    # daemon: if the parent exits without shutdown, multiprocessing terminates it.
    process = ctx.Process(target=child_main, name=f"actorexec-rank{rank}", daemon=True,
                          args=(actor_path, payload, endpoint, rank, backend, os.getpid(),
                                use_uvloop))
    process.start()
    transport = await connect_dealer(endpoint, backend)
    ref = ProcessRef(process, transport, rank, on_death)
    try:
        await ref.wait_ready(start_timeout_s)
    except BaseException:
        ref.kill_now()
        raise
    return ref
