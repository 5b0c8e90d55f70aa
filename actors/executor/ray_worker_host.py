"""The Ray actor behind each rank: its process hosts actorexec's Worker on our own transport.

Ray starts this process on the node its placement-group bundle names, gives
it its GPU, and ends it (``ray.kill``, or with its owner). That is all Ray
does: the worker actor is served either on the shared-memory rings of the
executor's channel, when this process runs on the executor's own node (it
collects the fds from the executor's hand-off socket: runtime/shm_handoff.py),
or by an :class:`ActorServer` on a ROUTER bound to ``tcp://<this node's
IP>:<port>`` (never all interfaces). Every call, step after step, goes that
way, typed, as with the ``mp`` backend. The Ray methods here are lifecycle
only, with plain arguments.

The serving loop runs in a thread of its own (Ray owns the process's main
thread). Beside the worker it watches this node's raylet, the process's
parent: when the node is removed, the raylet dies first and Ray notices the
worker only seconds later, so the host itself stops the worker at once with
an :class:`ActorFatalError` naming rank, node and cause (every unanswered
call fails with it), and the process exits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import traceback
from typing import Any

from actorexec.protocol.codec import MethodSpec
from actorexec.runtime import ActorFatalError, run
from actorexec.runtime.child import FAILED_EXIT_CODE, import_path
from actorexec.runtime.endpoints import free_tcp_port, interface_of, tcp
from actorexec.runtime.shm_handoff import receive_endpoint
from actorexec.runtime.transport.shm_channel import ShmEndpoint

logger = logging.getLogger("actorexec.executor.ray")

NODE_WATCH_INTERVAL_S = 0.1   # how often the raylet (this process's parent) is checked
EXIT_AFTER_FAILURE_S = 2.0    # a failed host exits on its own after this (if not killed first)
START_TIMEOUT_S = 120.0


class RayWorkerHost:
    """One rank's Ray actor. Why a host and not the Worker itself as the Ray actor: the
    Worker stays the same actor on every backend, and no step ever pays for Ray RPC."""

    def __init__(self) -> None:
        import ray

        self.node_ip: str = ray.util.get_node_ip_address()
        self.node_id: str = ray.get_runtime_context().get_node_id()
        self.raylet_pid = os.getppid()  # Ray's worker processes are the raylet's children
        self._stopped = threading.Event()
        self._outcome = ""  # "" after an orderly stop; else why the worker stopped
        self._started = False

    def describe(self) -> tuple[str, str, int]:
        """``(node IP, node id, pid)`` of this rank's process."""
        return self.node_ip, self.node_id, os.getpid()

    def free_port(self) -> int:
        """A port free on this node's IP now (rank 0's rendezvous store binds it)."""
        return free_tcp_port(self.node_ip)

    def start(self, actor_path: str, init_payload: bytes, rank: int, backend: str,
              shm_address: str = "", shm_nonce: bytes = b"", shm_slot: int = -1) -> str:
        """Build the worker actor from its msgpack ``__init__`` arguments and serve it;
        returns its endpoint once serving is set up (raises what failed before that).
        With ``shm_address``, it serves ring ``shm_slot`` of the executor's channel (fds
        from that hand-off socket, proving itself with ``shm_nonce``); else ``tcp://``."""
        if self._started:
            raise RuntimeError(f"rank {rank}: this host already serves a worker")
        self._started = True
        # gloo binds to this node's interface, not to what the caller's config names.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface_of(self.node_ip))
        logging.basicConfig(level=os.environ.get("ACTOREXEC_LOG_LEVEL", "WARNING"),
                            format=f"%(asctime)s rank{rank} %(name)s %(levelname)s: %(message)s")
        bound: concurrent.futures.Future[str] = concurrent.futures.Future()
        shm = (shm_address, shm_nonce, shm_slot) if shm_address else None
        threading.Thread(target=self._serve_thread, name=f"actorexec-rank{rank}", daemon=True,
                         args=(actor_path, init_payload, rank, backend, shm, bound)).start()
        return bound.result(START_TIMEOUT_S)

    def wait_stopped(self) -> str:
        """Returns when the worker stops: ``""`` after an orderly shutdown, else why. The
        executor keeps one call of this pending per rank: Ray fails it (with the cause)
        when this process or its node dies."""
        self._stopped.wait()
        return self._outcome

    # -- the serving thread ------------------------------------------------------
    def _serve_thread(self, actor_path: str, init_payload: bytes, rank: int, backend: str,
                      shm: tuple[str, bytes, int] | None,
                      bound: concurrent.futures.Future[str]) -> None:
        lifeline = None
        try:
            where: str | ShmEndpoint = tcp(self.node_ip)
            if shm is not None:
                where, lifeline = receive_endpoint(*shm, timeout_s=START_TIMEOUT_S)
            run(serve_worker(actor_path, init_payload, rank, backend, where, self.node_ip,
                             self.node_id, self.raylet_pid, bound))
        except BaseException as exc:
            text = "".join(traceback.format_exception_only(exc)).strip()
            self._outcome = text or type(exc).__name__
            logger.error("rank %d stopped:\n%s", rank, traceback.format_exc())
            if not bound.done():
                bound.set_exception(exc)
            # The work thread may be stuck in a collective with a dead peer: go, unless
            # the executor's ray.kill comes first.
            threading.Timer(EXIT_AFTER_FAILURE_S, os._exit, (FAILED_EXIT_CODE,)).start()
        finally:
            if lifeline is not None:  # the executor sees this rank stop serving at once
                lifeline.close()
            self._stopped.set()


# Module functions, not methods: Ray makes an actor class with any coroutine method an
# asyncio actor, whose blocking methods (wait_stopped) would stall all the others.
async def serve_worker(actor_path: str, init_payload: bytes, rank: int, backend: str,
                       where: str | ShmEndpoint, node_ip: str, node_id: str, raylet_pid: int,
                       bound: concurrent.futures.Future[str]) -> None:
    """Serve the worker on ``where`` (a ``tcp://`` endpoint or granted rings) until it
    stops."""
    from actorexec.runtime.server import ActorServer
    from actorexec.runtime.shm_server import ShmActorServer
    from actorexec.runtime.transport.shm_channel import ShmServerLink

    cls = import_path(actor_path)
    actor: Any = cls(**MethodSpec(cls.__init__, "__init__").decode_args([init_payload]))
    if isinstance(where, ShmEndpoint):
        link = ShmServerLink(where, asyncio.get_running_loop())
        server: ActorServer = ShmActorServer(actor, link, rank)
    else:
        server = await ActorServer.bind(actor, where, rank, backend)
    bound.set_result(str(where))
    await server.serve(watch_node(rank, node_ip, node_id, raylet_pid))


async def watch_node(rank: int, node_ip: str, node_id: str, raylet_pid: int) -> None:
    """Raises ActorFatalError (stopping the worker loudly) once the raylet has exited."""
    while os.getppid() == raylet_pid:
        await asyncio.sleep(NODE_WATCH_INTERVAL_S)
    raise ActorFatalError(
        f"worker rank {rank} (pid {os.getpid()}) on node {node_ip} ({node_id[:8]}): its Ray "
        f"node went away (the raylet, pid {raylet_pid}, exited); the worker stops")
