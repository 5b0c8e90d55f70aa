"""The actor base: an allow-listed RPC surface, a lifecycle in named phases, one work thread.

A subclass marks its RPC methods with :func:`expose`; only those can be called
from outside (a call to anything else fails with MethodNotAllowedError and runs
nothing). The decorator says where a method runs:

- ``@expose``: on the actor's event loop, one call at a time in arrival order.
  For quick bookkeeping; an ``async def`` may await, and its reply waits for it.
- ``@expose(thread=True)``: on the actor's single work thread (blocking work:
  device set-up, model steps). The loop goes on taking messages meanwhile.
  The body returns the real value. To reply later without holding the thread
  (a device->host copy still in flight), it may return a
  ``concurrent.futures.Future`` or an awaitable instead: the mailbox awaits it
  on the loop before replying while the thread takes the next call.
- ``@expose(ordered=False)``: on the loop, replied at once, ahead of replies
  still waiting for work in flight (health probes). Ordered replies otherwise
  leave in call order.

Annotate an exposed method with the *wire* types (what the reply carries). The
annotations build the codec on both sides, so they must resolve at runtime.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, overload

from actorexec.protocol.codec import MethodSpec, build_method_specs

from .work_thread import WorkThread

F = TypeVar("F", bound=Callable[..., Any])
_RPC_MARK = "__actorexec_rpc__"

# Method names the runtime itself answers (the ready handshake).
READY_METHOD = "__ready__"

Phase = Literal["created", "starting", "running", "stopping", "stopped"]


@dataclass(frozen=True, slots=True)
class Exposed:
    """How an allow-listed method runs (see the module docstring)."""

    thread: bool = False
    ordered: bool = True


@overload
def expose(func: F, /) -> F: ...
@overload
def expose(*, thread: bool = False, ordered: bool = True) -> Callable[[F], F]: ...
def expose(func: F | None = None, /, *, thread: bool = False,
           ordered: bool = True) -> F | Callable[[F], F]:
    """Put a method on its actor's RPC allow-list; say where it runs (module docstring)."""
    if thread and not ordered:
        raise TypeError("a thread=True method replies in call order (ordered=False is for "
                        "loop methods such as health probes)")

    def mark(f: F) -> F:
        setattr(f, _RPC_MARK, Exposed(thread=thread, ordered=ordered))
        return f

    return mark if func is None else mark(func)


@dataclass(frozen=True, slots=True)
class WorkStatus:
    """What the work thread is running now, and since when (``time.monotonic()``)."""

    method: str
    started: float

    @property
    def busy_for_s(self) -> float:
        return time.monotonic() - self.started


class Actor:
    """Base of every actor. Why: one place defines what may be called remotely and how
    an actor lives: ``created`` -> ``starting`` (``on_start``) -> ``running`` (calls, and
    ``background`` beside them) -> ``stopping`` -> ``stopped`` (``on_stop``).

    Subclasses must call ``super().__init__()`` (checked when the actor is hosted).
    ``allow_callable_rpc`` lets trusted single-host callers run a module-level
    function ``fn(actor, *args, **kwargs)`` named ``"module:qualname"``; it is
    off unless a subclass turns it on from its config.
    """

    rpc_methods: ClassVar[Mapping[str, Exposed]] = {}
    allow_callable_rpc: bool = False

    def __init__(self) -> None:
        self.phase: Phase = "created"
        self._stop_requested = False
        self._work: WorkThread | None = None
        self._work_status: WorkStatus | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        methods: dict[str, Exposed] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                mark = getattr(value, _RPC_MARK, None)
                if isinstance(mark, Exposed):
                    methods[name] = mark
                # An undecorated override of an exposed method stays exposed and runs where
                # the base's decorator says (an override cannot move a step off the thread).
        cls.rpc_methods = methods

    @classmethod
    def method_specs(cls) -> dict[str, MethodSpec]:
        """Wire specs of the allow-listed methods (cached per class)."""
        cached = cls.__dict__.get("_method_specs_cache")
        if cached is None:
            cached = build_method_specs(cls, sorted(cls.rpc_methods))
            cls._method_specs_cache = cached  # type: ignore[attr-defined]
        return cached

    def check_initialised(self) -> None:
        """Raises TypeError if a subclass's ``__init__`` forgot ``super().__init__()``."""
        if "phase" not in self.__dict__:
            raise TypeError(f"{type(self).__name__}.__init__ did not call super().__init__(); "
                            "Actor.__init__ sets up the actor's lifecycle and work thread")

    # -- lifecycle hooks ---------------------------------------------------
    async def on_start(self) -> None:
        """Runs in the actor's loop before the first call is handled."""

    async def background(self) -> None:
        """Runs beside the mailbox while the actor serves (a watchdog, say); cancelled at stop.

        If it raises, the actor stops loudly: every call not yet answered fails
        with the error, and an actor process exits non-zero.
        """

    async def on_stop(self) -> None:
        """Runs after an orderly stop (its ``shutdown`` call), once the last reply has left.
        Not after a failure, nor when the host cancels the actor: the work thread may be
        stuck then, and clean-up that waits for it would hang."""

    def request_stop(self) -> None:
        """Ask the host to stop after the current call's reply has been sent; later calls
        are refused. Call it from a loop method (as ``shutdown`` does): the mailbox checks
        it after each call it takes."""
        self._stop_requested = True

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    @expose
    def shutdown(self) -> None:
        """Stop serving once this call's reply has left (subclasses add their clean-up)."""
        self.request_stop()

    # -- the work thread -------------------------------------------------
    def work_thread(self) -> WorkThread:
        """This actor's single work thread (started on first use)."""
        if self._work is None:
            self._work = WorkThread(f"{type(self).__name__}-work")
        return self._work

    def offload(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run blocking ``fn(*args)`` on this actor's single work thread.

        One thread, so work runs in call order and touches actor state from one
        thread only; the loop stays free to take messages. ``thread=True``
        methods run there too; an ``async`` handler may call this directly.
        """
        return self.work_thread().offload(fn, *args)

    def run_on_work_thread(self, method: str, fn: Callable[[], Any],
                           check: Callable[[], None] | None,
                           on_done: Callable[[bool, Any], None]) -> None:
        """Queue :meth:`work_job` on the work thread."""
        self.work_thread().submit(self.work_job(method, fn, check, on_done))

    def work_job(self, method: str, fn: Callable[[], Any], check: Callable[[], None] | None,
                 on_done: Callable[[bool, Any], None]) -> Callable[[], None]:
        """A job for the work thread: ``fn()``, recorded in :meth:`work_status` while it runs.

        ``check()`` runs first (the mailbox's deadline check, so a call that waited
        behind a long one is refused unrun when it gets there). ``on_done(ok,
        value_or_exception)`` runs once ``fn`` (or ``check``) has finished and the
        status is cleared: the mailbox answers the call from there, or wakes the loop to.
        """
        def job() -> None:
            try:
                if check is not None:
                    check()
                self._work_status = WorkStatus(method, time.monotonic())
                try:
                    value = fn()
                finally:
                    self._work_status = None
            except BaseException as exc:
                on_done(False, exc)
                return
            on_done(True, value)

        return job

    def work_status(self) -> WorkStatus | None:
        """What the work thread is running now (None when idle). Safe from the loop."""
        return self._work_status

    def close_work_thread(self) -> None:
        work, self._work = self._work, None
        if work is not None:
            work.close()  # a step still running finishes on its own; nothing waits for it


Actor.rpc_methods = {"shutdown": Exposed()}
