"""The mailbox: one actor's calls, handled in arrival order, replied in call order.

A call is *taken* (allow-list checked, arguments decoded, started on the loop
or queued on the work thread) as soon as it is put, when nothing is queued
before it; otherwise the *handler* task takes it in turn. Taking at once saves
a loop iteration per call and lets a host lend the payload's memory only for
the duration of ``put`` (the shared-memory transport decodes straight from
its ring). Replies leave strictly in call order (``reply_order.py``): a call
whose result is ready when taken, with nothing before it, is answered at
once; the *replier* task answers the others in turn; with
``replies_from_thread`` the work thread answers its own call.

:meth:`Mailbox.run` hosts the actor in one structured scope (an
``asyncio.TaskGroup``): the handler, the replier, the actor's ``background()``
and the host's receive loop. If any of these fails, the others are cancelled,
every call not yet answered fails with :class:`ActorFatalError`, and ``run``
raises: the host stops loudly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from actorexec.protocol.codec import Frame
from actorexec.protocol.envelopes import Call
from actorexec.protocol.errors import ActorClosedError

from .actor import Actor, Exposed
from .call_binding import LocalArgs, bind_call, check_deadline
from .errors import fatal_error_from
from .reply_order import Pending, ReplyOrder, ReplySink, replies_later

logger = logging.getLogger("actorexec.runtime.mailbox")

_THREAD = Exposed(thread=True)  # calls by function path run on the work thread
__all__ = ["LocalArgs", "Mailbox", "ReplySink"]


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class Mailbox:
    """Runs calls for one actor. Why a class: both hosts (in-loop ref, process server)
    share it, so calls behave the same in and out of process."""

    def __init__(self, actor: Actor, replies_from_thread: bool = False) -> None:
        actor.check_initialised()
        self.actor = actor
        self.specs = type(actor).method_specs()
        self.methods = type(actor).rpc_methods
        self._inbox: asyncio.Queue[tuple[Call, Sequence[Frame] | LocalArgs, ReplySink]] = (
            asyncio.Queue())
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()  # the replier has something to look at
        self._order = ReplyOrder(functools.partial(loop.call_soon_threadsafe, self._changed.set),
                                 from_thread=replies_from_thread)
        self._queued = 0  # calls in the inbox, or being taken from it
        self._handler_done = False
        self._handler: asyncio.Task[None] | None = None
        self._replied_all = asyncio.Event()
        self.started: asyncio.Future[None] = loop.create_future()
        self.started.add_done_callback(_retrieve)

    @property
    def takes_now(self) -> bool:
        """Would a call put now be taken before ``put`` returns (its payload decoded)?"""
        return (self.actor.phase == "running" and not self.actor.stop_requested
                and self._queued == 0)

    def put(self, call: Call, payload: Sequence[Frame] | LocalArgs, sink: ReplySink) -> None:
        """Takes the call now if nothing waits before it, else queues it (see the module)."""
        if self.actor.phase in ("stopping", "stopped"):
            self._refuse(call, sink)
            return
        if not self.takes_now:
            self._queued += 1
            self._inbox.put_nowait((call, payload, sink))
            return
        self._take(call, payload, sink)
        if self.actor.stop_requested:
            self._stop_taking()

    def take_on_thread(self, call: Call, payload: Sequence[Frame],
                       sink: ReplySink) -> Callable[[], None] | None:
        """On the work thread: takes a ``thread=True`` call that nothing waits before, and
        returns the job to run now, on this thread (the sink must be thread-safe). None
        if the call is not one to take here: then the loop must ``put`` it."""
        exposed = self.methods.get(call.method, _THREAD)
        if not exposed.thread or not self.takes_now:
            return None
        self._order.pop_answered()
        pending = self._order.add(call, sink)
        if pending is None:
            return None
        on_done = functools.partial(self._order.thread_done, pending)
        try:
            fn = self._bind(call, payload)
        except Exception as exc:
            return functools.partial(on_done, False, exc)
        check = None if call.deadline is None else functools.partial(check_deadline, call)
        return self.actor.work_job(call.method, fn, check, on_done)

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
                self._handler = tasks.create_task(self._handle_loop(), name="mailbox-handler")
                tasks.create_task(self._reply_loop(), name="mailbox-replier")
                others = [self._handler,
                          tasks.create_task(actor.background(), name="actor-background")]
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

    # -- taking ---------------------------------------------------------------
    async def _handle_loop(self) -> None:
        while not self.actor.stop_requested:
            call, payload, sink = await self._inbox.get()
            self._take(call, payload, sink)
            self._queued -= 1  # only now: the work thread takes nothing before this one
        self._stop_taking()

    def _stop_taking(self) -> None:
        """The actor asked to stop: take nothing more; the replier finishes what was taken."""
        self._handler_done = True
        self._changed.set()
        if self._handler is not None and self._handler is not asyncio.current_task():
            self._handler.cancel()  # it waits in the inbox for a call it must not take

    def _take(self, call: Call, payload: Sequence[Frame] | LocalArgs, sink: ReplySink) -> None:
        exposed = self.methods.get(call.method, _THREAD)
        if not exposed.ordered:
            self._answer_now(call, payload, sink)
            return
        order = self._order
        order.pop_answered()  # answered from the work thread without waking the replier
        first = not order.entries
        if exposed.thread:
            pending = order.add(call, sink)
            if pending is None:  # the mailbox has failed: nothing more is taken
                self._refuse(call, sink)
                return
            self._start_on_thread(pending, payload)
            if not (first and order.thread_will_answer(pending)):
                self._changed.set()  # (a call the work thread answers itself needs no replier)
            return
        if order.closed:
            self._refuse(call, sink)
            return
        # A loop method runs now. Nobody can take a call meanwhile (the work thread takes
        # only with nothing queued and under the ring's lock, which the loop holds while it
        # delivers), so its place in the order is the next one whatever runs first.
        try:
            ok, value = self._run_on_loop(call, payload)
        except BaseException:  # fatal (SystemExit and the like): the mailbox's failure
            order.add(call, sink)  # answers every held call, this one too
            raise
        if first and (not ok or not replies_later(value)) and order.answer_alone(
                call, sink, ok, value):
            return  # nothing before it, its result final: answered, no place kept
        pending = order.add(call, sink)
        if pending is None:
            self._refuse(call, sink)
            return
        if ok and inspect.isawaitable(value):
            pending.future = asyncio.ensure_future(value)  # owned: cancelled if unanswered
        else:
            pending.outcome = (ok, value)
        self._changed.set()

    def _refuse(self, call: Call, sink: ReplySink) -> None:
        sink(call, False, ActorClosedError(f"{type(self.actor).__name__} has stopped"))

    def _start_on_thread(self, pending: Pending, payload: Sequence[Frame] | LocalArgs) -> None:
        """Queues a ``thread=True`` call on the work thread, which fills ``pending.outcome``;
        a refused call gets its exception as the outcome."""
        call = pending.call
        try:
            fn = self._bind(call, payload)
        except Exception as exc:
            pending.outcome = (False, exc)
            return
        check = None if call.deadline is None else functools.partial(check_deadline, call)
        self.actor.run_on_work_thread(
            call.method, fn, check, functools.partial(self._order.thread_done, pending))

    def _run_on_loop(self, call: Call, payload: Sequence[Frame] | LocalArgs) -> tuple[bool, Any]:
        """Runs a loop method's call now: (True, its value, maybe an awaitable) or (False,
        the exception that refused or failed it)."""
        try:
            fn = self._bind(call, payload)
            check_deadline(call)
            return True, fn()
        except Exception as exc:
            return False, exc

    # -- replying -------------------------------------------------------------
    async def _reply_loop(self) -> None:
        entries = self._order.entries
        while True:
            while entries:
                try:
                    head = entries[0]
                except IndexError:  # the work thread popped the last answered call
                    break
                if not head.replied:
                    if self._order.thread_will_answer(head):
                        break  # the work thread (or whoever completes its reply) wakes us
                    ok, value = await self._result(head)
                    self._order.send(head, ok, value)  # may raise: fatal
                if head.reply_error is not None:
                    raise head.reply_error
                self._order.pop(head)  # (unless _take popped it meanwhile)
            if not entries and self._handler_done:
                break
            self._changed.clear()
            await self._changed.wait()
        self._replied_all.set()

    async def _result(self, head: Pending) -> tuple[bool, Any]:
        """The head call's final (ok, value), awaiting whatever it still waits for."""
        try:
            if head.future is not None:
                value = await head.future
            else:
                assert head.outcome is not None
                ok, value = head.outcome
                if not ok:
                    if isinstance(value, Exception):
                        return False, value
                    raise value  # SystemExit and the like from the thread: fatal
            if isinstance(value, concurrent.futures.Future):  # reply later (thread=True)
                value = await asyncio.wrap_future(value)
            elif inspect.isawaitable(value):
                value = await value
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the replier itself is being cancelled
            return False, ActorClosedError("the call was cancelled before it replied")
        except Exception as exc:
            return False, exc
        return True, value

    def _answer_now(self, call: Call, payload: Sequence[Frame] | LocalArgs,
                    sink: ReplySink) -> None:
        try:
            check_deadline(call)
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
        return bind_call(self.actor, self.specs, call, payload)

    # -- stopping -------------------------------------------------------------
    def _fail_unanswered(self, error: BaseException) -> None:
        """Every call started or queued but not answered gets ``error`` (best effort); the
        work thread answers nothing from now on."""
        never, held = self._order.close()
        unanswered = [(p.call, p.sink) for p in never]
        for pending in held:  # owned here: an async handler's task is cancelled
            if pending.future is not None:  # (work already running on the thread runs on)
                pending.future.add_done_callback(_retrieve)
                pending.future.cancel()
        while not self._inbox.empty():
            call, _, sink = self._inbox.get_nowait()
            unanswered.append((call, sink))
        for call, sink in unanswered:
            try:
                sink(call, False, error)
            except Exception as exc:  # the socket itself failed: nothing more to tell
                logger.error("%s: could not fail call %s: %s", type(self.actor).__name__,
                             call.call_id, exc)
