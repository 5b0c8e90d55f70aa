"""The mailbox: one actor's calls, handled in arrival order, replied in call order.

:meth:`Mailbox.run` hosts the actor in one structured scope (an
``asyncio.TaskGroup``): the *handler* task takes the next call, checks the
allow-list, decodes its arguments and starts it (on the loop, or queued on the
work thread); the *replier* task awaits results strictly in call order and
hands each to the call's reply sink, so reply N never overtakes reply N-1; the
actor's ``background()`` and the host's receive loop run beside them. If any
of these fails, the others are cancelled, every call not yet answered fails
with :class:`ActorFatalError`, and ``run`` raises: the host stops loudly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from actorexec.protocol.codec import Frame, generic_spec
from actorexec.protocol.envelopes import Call
from actorexec.protocol.errors import ActorClosedError, MethodNotAllowedError

from .actor import Actor, Exposed
from .errors import fatal_error_from

logger = logging.getLogger("actorexec.runtime.mailbox")

# sink(call, ok, value_or_exception): delivers one reply (encode + send, or set a future).
# A sink that raises (the socket failed) is fatal for the actor.
ReplySink = Callable[[Call, bool, Any], None]
_THREAD = Exposed(thread=True)  # calls by function path run on the work thread


@dataclass(slots=True)
class LocalArgs:
    """Arguments of an in-loop call: already bound by name, never encoded."""

    kwargs: dict[str, Any]
    function: Callable[..., Any] | None = None  # uni executor: a callable, run as fn(actor, ...)
    args: Sequence[Any] = field(default_factory=tuple)


@dataclass(slots=True)
class _Started:
    call: Call
    result: asyncio.Future[Any]
    sink: ReplySink


def _check_deadline(call: Call) -> None:
    if call.deadline is not None and time.time() > call.deadline:
        raise TimeoutError(f"call {call.method!r} reached the actor after its deadline; not run")


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class Mailbox:
    """Runs calls for one actor. Why a class: both hosts (in-loop ref, process server)
    share it, so calls behave the same in and out of process."""

    def __init__(self, actor: Actor) -> None:
        actor.check_initialised()
        self.actor = actor
        self.specs = type(actor).method_specs()
        self.methods = type(actor).rpc_methods
        self._inbox: asyncio.Queue[tuple[Call, Sequence[Frame] | LocalArgs, ReplySink]] = (
            asyncio.Queue())
        self._outbox: deque[_Started] = deque()
        self._outbox_changed = asyncio.Event()
        self._handler_done = False
        self._replied_all = asyncio.Event()
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started.add_done_callback(_retrieve)

    def put(self, call: Call, payload: Sequence[Frame] | LocalArgs, sink: ReplySink) -> None:
        if self.actor.phase in ("stopping", "stopped"):
            sink(call, False, ActorClosedError(f"{type(self.actor).__name__} has stopped"))
            return
        self._inbox.put_nowait((call, payload, sink))

    async def run(self, *beside: Coroutine[Any, Any, None]) -> None:
        """Host the actor until it stops: ``on_start``, then calls (with ``background()``
        and ``beside``, e.g. the host's receive loop), then ``on_stop`` after an orderly
        stop. Raises what failed (an ExceptionGroup from the task group) or CancelledError.
        """
        actor = self.actor
        actor.phase = "starting"
        orderly = False
        try:
            try:
                await actor.on_start()
            except asyncio.CancelledError:
                self.started.cancel()
                raise
            except BaseException as exc:
                self.started.set_exception(exc)
                raise
            actor.phase = "running"
            self.started.set_result(None)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._handle_loop(), name="mailbox-handler")
                tasks.create_task(self._reply_loop(), name="mailbox-replier")
                others = [tasks.create_task(actor.background(), name="actor-background")]
                others += [tasks.create_task(c, name="actor-host") for c in beside]
                await self._replied_all.wait()
                for task in others:
                    task.cancel()
            orderly = True
            # Calls that arrived after the shutdown call: refused, never left waiting.
            self._fail_unanswered(ActorClosedError(f"{type(actor).__name__} has stopped"))
        except BaseException as exc:
            for c in beside:  # never started if on_start failed: close, or Python warns
                c.close()
            self._fail_unanswered(fatal_error_from(exc, type(actor).__name__))
            raise
        finally:
            actor.phase = "stopping"
            try:
                if orderly:
                    await actor.on_stop()
            finally:
                actor.close_work_thread()
                actor.phase = "stopped"

    # -- the two loops ------------------------------------------------------
    async def _handle_loop(self) -> None:
        while not self.actor.stop_requested:
            call, payload, sink = await self._inbox.get()
            exposed = self.methods.get(call.method, _THREAD)
            if not exposed.ordered:
                self._answer_now(call, payload, sink)
                continue
            self._outbox.append(_Started(call, self._start(call, payload, exposed), sink))
            self._outbox_changed.set()
        self._handler_done = True
        self._outbox_changed.set()

    async def _reply_loop(self) -> None:
        while True:
            if not self._outbox:
                if self._handler_done:
                    break
                self._outbox_changed.clear()
                await self._outbox_changed.wait()
                continue
            head = self._outbox[0]
            ok, value = True, None
            try:
                value = await head.result
                if isinstance(value, concurrent.futures.Future):  # reply later (thread=True)
                    value = await asyncio.wrap_future(value)
                elif inspect.isawaitable(value):
                    value = await value
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the replier itself is being cancelled
                ok, value = False, ActorClosedError("the call was cancelled before it replied")
            except Exception as exc:
                ok, value = False, exc
            head.sink(head.call, ok, value)  # may raise: fatal, and head is still unanswered
            self._outbox.popleft()
        self._replied_all.set()

    # -- starting a call ------------------------------------------------------
    def _start(self, call: Call, payload: Sequence[Frame] | LocalArgs,
               exposed: Exposed) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any]
        try:
            fn = self._bind(call, payload)
            if exposed.thread:
                check = None if call.deadline is None else functools.partial(_check_deadline, call)
                return self.actor.run_on_work_thread(call.method, fn, check)
            _check_deadline(call)
            value = fn()
            if inspect.isawaitable(value):
                return asyncio.ensure_future(value)
        except Exception as exc:
            fut = loop.create_future()
            fut.set_exception(exc)
            return fut
        fut = loop.create_future()
        fut.set_result(value)
        return fut

    def _answer_now(self, call: Call, payload: Sequence[Frame] | LocalArgs,
                    sink: ReplySink) -> None:
        try:
            _check_deadline(call)
            value = self._bind(call, payload)()
            if inspect.isawaitable(value):
                raise TypeError(f"{call.method} is exposed with ordered=False, so it must "
                                "return its value, not an awaitable")
        except Exception as exc:
            sink(call, False, exc)
            return
        sink(call, True, value)

    def _bind(self, call: Call, payload: Sequence[Frame] | LocalArgs) -> Callable[[], Any]:
        """The call as a function of no arguments; refused calls raise here, before running."""
        if isinstance(payload, LocalArgs) and payload.function is not None:
            return functools.partial(payload.function, self.actor, *payload.args,
                                     **payload.kwargs)
        spec = self.specs.get(call.method)
        if spec is None:
            return self._bind_by_path(call, payload)
        kwargs = payload.kwargs if isinstance(payload, LocalArgs) else spec.decode_args(payload)
        return functools.partial(getattr(self.actor, call.method), **kwargs)

    def _bind_by_path(self, call: Call, payload: Sequence[Frame] | LocalArgs) -> Callable[[], Any]:
        name = type(self.actor).__name__
        if ":" not in call.method or not self.actor.allow_callable_rpc:
            raise MethodNotAllowedError(f"{name}.{call.method} is not on the RPC allow-list "
                                        f"({', '.join(sorted(self.specs))})")
        module, _, qualname = call.method.partition(":")
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
        kw = payload.kwargs if isinstance(payload, LocalArgs) else (
            generic_spec().decode_args(payload))
        return functools.partial(target, self.actor, *kw["args"], **kw["kwargs"])

    # -- stopping -------------------------------------------------------------
    def _fail_unanswered(self, error: BaseException) -> None:
        """Every call started or queued but not answered gets ``error`` (best effort)."""
        unanswered = [(s.call, s.sink) for s in self._outbox]
        for started in self._outbox:  # owned here: an async handler's task is cancelled
            started.result.add_done_callback(_retrieve)
            started.result.cancel()  # (work already running on the thread runs to its end)
        self._outbox.clear()
        while not self._inbox.empty():
            call, _, sink = self._inbox.get_nowait()
            unanswered.append((call, sink))
        for call, sink in unanswered:
            try:
                sink(call, False, error)
            except Exception as exc:  # the socket itself failed: nothing more to tell
                logger.error("%s: could not fail call %s: %s", type(self.actor).__name__,
                             call.call_id, exc)

