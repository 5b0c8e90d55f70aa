"""Failures on the wire and back: exception → (type, message, traceback) → typed error.

Decision: a remote exception is always re-raised as a :class:`RemoteError`
(carrying remote type, message and traceback). When its type is one callers
commonly catch (actorexec's own errors, ValueError, TypeError, KeyError,
TimeoutError, ...), the raised class is a subclass of *both* RemoteError and
that type (``RemoteInvalidRequestError``), so ``except InvalidRequestError``
and ``except RemoteError`` both work. Anything else is a plain RemoteError: we
never import or construct arbitrary classes named by a peer.
"""

from __future__ import annotations

import asyncio
import builtins
import traceback

from actorexec.protocol import errors as perr
from actorexec.protocol.envelopes import Failure
from actorexec.protocol.errors import ActorClosedError, ActorexecError, RemoteError


class ActorFatalError(ActorexecError):
    """An actor stopped because one of its own tasks failed (a reply that could not be
    sent, a watchdog that fired); every call it had not answered fails with this, and
    an actor process exits non-zero. An executor that sees it from any rank fails."""


class CallTimeoutError(TimeoutError):
    """No reply came before the call's deadline. Whether the call ran is unknown."""


def fatal_error_from(exc: BaseException, actor_name: str) -> BaseException:
    """The error for calls an actor will never answer, given what stopped it."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, asyncio.CancelledError):
        return ActorClosedError(f"{actor_name} was shut down before replying")
    if isinstance(exc, ActorFatalError):
        return exc
    error = ActorFatalError(f"{actor_name} stopped: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error

_FAITHFUL: dict[str, type[BaseException]] = {
    name: getattr(builtins, name) for name in (
        "ValueError", "TypeError", "KeyError", "IndexError", "RuntimeError", "AssertionError",
        "NotImplementedError", "TimeoutError", "MemoryError", "AttributeError", "OSError")
}
for _cls in (perr.ConfigError, perr.ProtocolError, perr.MethodNotAllowedError,
             perr.InvalidRequestError, perr.ActorClosedError, perr.ExecutorFailedError,
             perr.ActorDiedError, ActorFatalError):
    _FAITHFUL[_cls.__qualname__] = _cls
    _FAITHFUL[f"{_cls.__module__}.{_cls.__qualname__}"] = _cls

_REMOTE_CLASSES: dict[type[BaseException], type[RemoteError]] = {}


def as_remote(exc: BaseException) -> BaseException:
    """``exc`` as a process-hosted actor's caller would see it (same class, same text).

    Why: the in-process executor raises exactly what the mp executor raises. The
    original stays reachable as ``__cause__``.
    """
    error = error_from(failure_from(-1, exc))
    error.__cause__ = exc
    return error


def type_name(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def failure_from(call_id: int, exc: BaseException) -> Failure:
    tb = "".join(traceback.format_exception(exc))
    return Failure(call_id=call_id, exc_type=type_name(exc), message=str(exc), traceback=tb)


def _remote_class(base: type[BaseException]) -> type[RemoteError]:
    cls = _REMOTE_CLASSES.get(base)
    if cls is None:
        cls = type(f"Remote{base.__name__}", (RemoteError, base), {
            "__module__": __name__,
            "__init__": RemoteError.__init__,
            "__str__": RemoteError.__str__,
        })
        _REMOTE_CLASSES[base] = cls
    return cls


def error_from(failure: Failure) -> RemoteError:
    """The typed exception to raise on the caller for ``failure``."""
    base = _FAITHFUL.get(failure.exc_type)
    cls = _remote_class(base) if base is not None else RemoteError
    try:
        return cls(failure.exc_type, failure.message, failure.traceback)
    except TypeError:  # a base whose constructor disagrees: fall back to the plain type
        return RemoteError(failure.exc_type, failure.message, failure.traceback)
