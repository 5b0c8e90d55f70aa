"""Actor machinery: actor base, mailboxes, refs, ZeroMQ transports, processes, loops.

Never imports torch or model code. The names below are what people writing or
calling actors use; the plumbing (transports, codecs, endpoint directories)
stays in its modules.
"""

from .actor import Actor, WorkStatus, expose
from .errors import ActorFatalError, CallTimeoutError
from .loop import run
from .process import ProcessRef, spawn_actor
from .refs import ActorRef, LocalRef, PreparedCall, submit_all
from .remote_ref import RemoteRef

__all__ = [
    "Actor", "ActorFatalError", "ActorRef", "CallTimeoutError", "LocalRef", "PreparedCall",
    "ProcessRef", "RemoteRef", "WorkStatus", "expose", "run", "spawn_actor", "submit_all",
]
