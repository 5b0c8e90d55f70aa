"""Error types shared by every layer. Imports nothing of ours."""

from __future__ import annotations


class ActorexecError(Exception):
    """Base class of every error actorexec raises on purpose."""


class ConfigError(ActorexecError, ValueError):
    """A configuration value is invalid; raised at construction, before anything starts."""


class ProtocolError(ActorexecError):
    """A frame could not be decoded (malformed, unknown tag, wrong types).

    Nothing is executed for a frame that raises this.
    """


class MethodNotAllowedError(ActorexecError, PermissionError):
    """The called method is not on the actor's allow-list."""


class InvalidRequestError(ActorexecError, ValueError):
    """A step input (e.g. a SchedulerOutput) is inconsistent with the runner's state.

    Raised before any state changes, so the runner keeps serving other requests.
    """


class RemoteError(ActorexecError):
    """An exception raised inside another actor, re-raised on the caller.

    ``remote_type`` is the qualified name of the original exception class,
    ``remote_traceback`` its formatted traceback in the remote process.
    """

    def __init__(self, remote_type: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{remote_type}: {message}")
        self.remote_type = remote_type
        self.remote_message = message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        base = f"{self.remote_type}: {self.remote_message}"
        if self.remote_traceback:
            return f"{base}\n--- remote traceback ---\n{self.remote_traceback.rstrip()}"
        return base


class ActorDiedError(ActorexecError):
    """The actor serving a call died; names rank, pid and exit code or signal (and, for a
    worker on another host, its node)."""

    def __init__(self, message: str, rank: int | None = None, pid: int | None = None,
                 exitcode: int | None = None, node: str | None = None) -> None:
        super().__init__(message)
        self.rank = rank
        self.pid = pid
        self.exitcode = exitcode
        self.node = node


class ExecutorFailedError(ActorexecError):
    """The executor lost a worker earlier; every later call raises this at once."""


class RequestFailedError(ActorexecError):
    """The engine gave up on this one request: the executor failed repeatedly while it was
    in flight and it made no progress in between (see docs/engine.md, "Restarts"). Other
    requests go on; only this stream raises."""


class ActorClosedError(ActorexecError):
    """The actor or ref was shut down; the call was not (or no longer) delivered."""
