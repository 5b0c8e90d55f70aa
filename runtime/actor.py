"""The actor base: an allow-listed RPC surface, lifecycle hooks, one work thread.

A subclass marks its RPC methods with :func:`expose`; only those can be called
from outside (a call to anything else fails with MethodNotAllowedError and runs
nothing). Handlers run on the event loop, one at a time in arrival order. A
handler that starts slow work hands it to :meth:`Actor.offload` and returns the
future: its reply leaves when the work finishes, while the mailbox moves on to
decode the next message. Replies still leave in call order.

Annotate an exposed method with the *wire* types (what the reply carries); it
may return that value or an awaitable of it. The annotations build the codec
on both sides, so they must resolve at runtime.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from actorexec.protocol.codec import MethodSpec, build_method_specs

F = TypeVar("F", bound=Callable[..., Any])
_RPC_MARK = "__actorexec_rpc__"

# Method names the runtime itself answers (the ready handshake).
READY_METHOD = "__ready__"


def expose(func: F) -> F:
    """Put ``func`` on its actor's RPC allow-list."""
    setattr(func, _RPC_MARK, True)
    return func


class Actor:
    """Base of every actor. Why: one place defines what may be called remotely.

    ``allow_callable_rpc`` lets trusted single-host callers run a module-level
    function ``fn(actor, *args, **kwargs)`` named ``"module:qualname"``; it is
    off unless a subclass turns it on from its config.
    """

    rpc_methods: ClassVar[frozenset[str]] = frozenset()
    allow_callable_rpc: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names = set()
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if getattr(value, _RPC_MARK, False):
                    names.add(name)
                elif name in names and callable(value):
                    names.add(name)  # an override of an exposed method stays exposed
        cls.rpc_methods = frozenset(names)

    @classmethod
    def method_specs(cls) -> dict[str, MethodSpec]:
        """Wire specs of the allow-listed methods (cached per class)."""
        cached = cls.__dict__.get("_method_specs_cache")
        if cached is None:
            cached = build_method_specs(cls, sorted(cls.rpc_methods))
            cls._method_specs_cache = cached  # type: ignore[attr-defined]
        return cached

    # -- lifecycle -------------------------------------------------------
    async def on_start(self) -> None:
        """Runs in the actor's loop before the first call is handled."""

    async def on_stop(self) -> None:
        """Runs after the last reply has left (also when the host shuts down)."""

    def request_stop(self) -> None:
        """Ask the host to stop after the current call's reply has been sent."""
        self._stop_requested = True

    @property
    def stop_requested(self) -> bool:
        return getattr(self, "_stop_requested", False)

    @expose
    def ping(self) -> None:
        """A no-op answered in mailbox order: its reply confirms every call before it."""
        return None

    @expose
    def shutdown(self) -> None:
        """Stop serving once this call's reply has left (subclasses add their clean-up)."""
        self.request_stop()

    # -- the work thread -------------------------------------------------
    def offload(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run blocking ``fn(*args)`` on this actor's single work thread.

        One thread, so offloaded work runs in call order and touches actor
        state from one thread only; the loop stays free to take messages.
        """
        pool = self.__dict__.get("_work_pool")
        if pool is None:
            pool = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"{type(self).__name__}-work")
            self._work_pool = pool
        return asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def close_work_thread(self) -> None:
        pool = self.__dict__.pop("_work_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


Actor.rpc_methods = frozenset({"ping", "shutdown"})


async def maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
