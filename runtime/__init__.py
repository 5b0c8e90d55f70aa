"""Actor machinery: actor base, mailboxes, refs, ZeroMQ transports, processes, loops.

Never imports torch or model code.
"""

from .actor import Actor, expose
from .child import import_path
from .endpoints import EndpointDir, free_tcp_port, tcp
from .errors import error_from, failure_from
from .loop import loop_factory, run, uvloop_available
from .mailbox import Mailbox
from .process import ProcessRef, describe_exit, spawn_actor
from .refs import ActorRef, LocalRef, PreparedCall, arm_deadline
from .server import ActorServer
from .transport import Transport, TransportClosed, bind_router, connect_dealer, resolve_backend

__all__ = [
    "Actor", "ActorRef", "ActorServer", "EndpointDir", "LocalRef", "Mailbox", "PreparedCall",
    "ProcessRef", "Transport", "TransportClosed", "arm_deadline", "bind_router",
    "connect_dealer", "describe_exit", "error_from", "expose", "failure_from", "free_tcp_port",
    "import_path", "loop_factory", "resolve_backend", "run", "spawn_actor", "tcp",
    "uvloop_available",
]
