"""The mailbox: calls handled one at a time in arrival order, replies sent in call order.

Two tasks. The *handler* task takes the next call, checks its deadline and the
allow-list, decodes its arguments and runs the handler; a handler that returns
an awaitable (work in flight on the actor's thread or a device) does not hold
the mailbox up. The *replier* task awaits those results strictly in call order
and hands each to the call's reply sink, so reply N never overtakes reply N-1.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from actorexec.protocol.codec import Frame, MethodSpec, generic_spec
from actorexec.protocol.envelopes import Call
from actorexec.protocol.errors import ActorClosedError, MethodNotAllowedError

from .actor import Actor

logger = logging.getLogger("actorexec.runtime.mailbox")

# sink(call, ok, value_or_exception): delivers one reply (encode + send, or set a future).
ReplySink = Callable[[Call, bool, Any], None]
_GENERIC = generic_spec()


@dataclass(slots=True)
class LocalArgs:
    """Arguments of an in-loop call: already bound by name, never encoded."""

    kwargs: dict[str, Any]
    function: Callable[..., Any] | None = None  # uni executor: a callable, run as fn(actor, ...)
    args: Sequence[Any] = field(default_factory=tuple)


class Mailbox:
    """Runs calls for one actor. Why a class: both refs (in-loop, process) share it."""

    def __init__(self, actor: Actor) -> None:
        self.actor = actor
        self.specs = type(actor).method_specs()
        self._inbox: asyncio.Queue[tuple[Call, Sequence[Frame] | LocalArgs, ReplySink]] = (
            asyncio.Queue())
        self._outbox: asyncio.Queue[tuple[Call, asyncio.Future[Any], ReplySink] | None] = (
            asyncio.Queue())
        self._tasks: list[asyncio.Task[None]] = []
        self.stopped = asyncio.Event()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._handle_loop(), name="mailbox-handler"),
                       asyncio.create_task(self._reply_loop(), name="mailbox-replier")]

    def put(self, call: Call, payload: Sequence[Frame] | LocalArgs, sink: ReplySink) -> None:
        if self.stopped.is_set():
            sink(call, False, ActorClosedError(f"{type(self.actor).__name__} has stopped"))
            return
        self._inbox.put_nowait((call, payload, sink))

    async def _handle_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.actor.stop_requested:
            call, payload, sink = await self._inbox.get()
            try:
                if call.deadline is not None and time.time() > call.deadline:
                    raise TimeoutError(f"call {call.method!r} reached the actor after its deadline")
                value = self._invoke(call, payload)
                fut = asyncio.ensure_future(value) if inspect.isawaitable(value) else None
            except Exception as exc:
                fut = loop.create_future()
                fut.set_exception(exc)
            if fut is None:
                fut = loop.create_future()
                fut.set_result(value)
            self._outbox.put_nowait((call, fut, sink))
        self._outbox.put_nowait(None)  # the replier stops after the last reply

    def _invoke(self, call: Call, payload: Sequence[Frame] | LocalArgs) -> Any:
        if isinstance(payload, LocalArgs) and payload.function is not None:
            fn = payload.function
            return self.actor.offload(lambda: fn(self.actor, *payload.args, **payload.kwargs))
        spec = self.specs.get(call.method)
        if spec is None:
            return self._invoke_by_path(call, payload)
        kwargs = payload.kwargs if isinstance(payload, LocalArgs) else spec.decode_args(payload)
        return getattr(self.actor, call.method)(**kwargs)

    def _invoke_by_path(self, call: Call, payload: Sequence[Frame] | LocalArgs) -> Any:
        name = type(self.actor).__name__
        if ":" not in call.method or not self.actor.allow_callable_rpc:
            raise MethodNotAllowedError(f"{name}.{call.method} is not on the RPC allow-list "
                                        f"({', '.join(sorted(self.specs))})")
        module, _, qualname = call.method.partition(":")
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
        spec: MethodSpec = _GENERIC
        kw = payload.kwargs if isinstance(payload, LocalArgs) else spec.decode_args(payload)
        return self.actor.offload(lambda: target(self.actor, *kw["args"], **kw["kwargs"]))

    async def _reply_loop(self) -> None:
        while (item := await self._outbox.get()) is not None:
            call, fut, sink = item
            try:
                value = await fut
            except asyncio.CancelledError:
                if not fut.cancelled():
                    raise  # this task itself was cancelled
                sink(call, False, ActorClosedError(f"call {call.method!r} was cancelled"))
            except Exception as exc:
                sink(call, False, exc)
            else:
                sink(call, True, value)
        self.stopped.set()

    async def close(self) -> None:
        """Stop at once: calls still queued fail with ActorClosedError."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        while not self._inbox.empty():
            call, _, sink = self._inbox.get_nowait()
            sink(call, False, ActorClosedError(f"{type(self.actor).__name__} shut down"))
        while not self._outbox.empty():
            item = self._outbox.get_nowait()
            if item is not None:
                item[2](item[0], False, ActorClosedError("actor shut down before replying"))
        self.stopped.set()
