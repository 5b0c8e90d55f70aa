"""Refs: how a caller talks to an actor. ``submit`` sends at once and returns a future.

A :class:`PreparedCall` is built once per logical call (arguments bound and
checked at the caller, payload encoded lazily at most once) and submitted to
one or many refs: that is how ``collective_rpc`` encodes once and sends the
same frames to every rank. :class:`LocalRef` runs the actor in the caller's
loop (no encoding; exceptions arrive as the original objects);
``ProcessRef`` (process.py) talks to an actor process over ZeroMQ.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

from actorexec.protocol.codec import Frame, MethodSpec, PayloadEncoder, generic_spec
from actorexec.protocol.envelopes import Call
from actorexec.protocol.errors import ActorClosedError

from .actor import Actor
from .mailbox import LocalArgs, Mailbox

_GENERIC = generic_spec()
_ENCODER = PayloadEncoder()  # one per process; encode() is not re-entrant but never awaits


class PreparedCall:
    """A call bound against its method's spec; a bad call raises TypeError here, at the caller."""

    def __init__(self, method: str | Callable[..., Any], spec: MethodSpec | None,
                 args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None) -> None:
        if callable(method):
            self.function: Callable[..., Any] | None = method
            self.method = f"{method.__module__}:{method.__qualname__}"
            self.spec = _GENERIC
            self.args, self.kwargs = tuple(args), dict(kwargs or {})
            self.bound = {"args": list(args), "kwargs": dict(kwargs or {})}
        else:
            if spec is None:
                raise TypeError("a method name needs its MethodSpec")
            self.function = None
            self.method = method
            self.spec = spec
            self.args, self.kwargs = (), {}
            self.bound = spec.bind(args, kwargs)
        self._frames: list[Frame] | None = None

    @property
    def frames(self) -> list[Frame]:
        """``[payload, *tensor_buffers]``, encoded on first use and shared by every rank."""
        if self._frames is None:
            self._frames = _ENCODER.encode(self.bound)
        return self._frames

    def local_args(self) -> LocalArgs:
        if self.function is not None:
            return LocalArgs(kwargs=self.kwargs, function=self.function, args=self.args)
        return LocalArgs(kwargs=self.bound)


def arm_deadline(fut: asyncio.Future[Any], deadline: float | None, what: str) -> None:
    """Fail ``fut`` with TimeoutError at ``deadline`` (absolute time.time()) if still pending."""
    if deadline is None:
        return
    loop = asyncio.get_running_loop()

    def expire() -> None:
        if not fut.done():
            fut.set_exception(TimeoutError(f"{what} missed its deadline"))

    handle = loop.call_later(max(0.0, deadline - time.time()), expire)
    fut.add_done_callback(lambda _: handle.cancel())


class ActorRef(abc.ABC):
    """A handle to one actor (one rank)."""

    rank: int

    @abc.abstractmethod
    def submit(self, prepared: PreparedCall, deadline: float | None = None,
               reply_on_success: bool = True) -> asyncio.Future[Any]:
        """Send now; the future resolves with the typed reply (None if not asked for)."""

    @abc.abstractmethod
    async def close(self, grace_s: float = 5.0) -> None:
        """Stop the actor and release everything it holds."""

    @abc.abstractmethod
    def fail_pending(self, exc: BaseException) -> None:
        """Fail every call still waiting for a reply."""


class LocalRef(ActorRef):
    """An actor in this event loop. Why: the uni executor keeps one code path for calls."""

    def __init__(self, actor: Actor, rank: int = 0) -> None:
        self.actor = actor
        self.rank = rank
        self.mailbox = Mailbox(actor)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._closed = False

    async def start(self) -> None:
        await self.actor.on_start()
        self.mailbox.start()

    def submit(self, prepared: PreparedCall, deadline: float | None = None,
               reply_on_success: bool = True) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._closed:
            fut.set_exception(ActorClosedError(f"actor rank {self.rank} is closed"))
            return fut
        call = Call(next(self._ids), prepared.method, deadline, reply_on_success)
        self._pending[call.call_id] = fut
        fut.add_done_callback(lambda _: self._pending.pop(call.call_id, None))
        arm_deadline(fut, deadline, f"call {prepared.method!r} to rank {self.rank}")
        self.mailbox.put(call, prepared.local_args(), self._reply)
        return fut

    def _reply(self, call: Call, ok: bool, value: Any) -> None:
        fut = self._pending.get(call.call_id)
        if fut is None or fut.done():
            return
        if ok:
            fut.set_result(value if call.reply_on_success else None)
        else:
            fut.set_exception(value)

    def fail_pending(self, exc: BaseException) -> None:
        for fut in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(exc)

    async def close(self, grace_s: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.mailbox.close()
            self.fail_pending(ActorClosedError(f"actor rank {self.rank} was closed"))
            await self.actor.on_stop()
        finally:
            self.actor.close_work_thread()
