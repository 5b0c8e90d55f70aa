"""RayDistributedExecutor: ranks on a Ray cluster; Ray places them, our sockets drive them.

As in vLLM's current Ray executor, Ray is used for placement and lifecycle
only: a placement group of ``tp x pp`` bundles (one GPU each on CUDA, one CPU
on the CPU), one Ray actor per rank (:class:`RayWorkerHost`) hosting
actorexec's Worker actor, node IPs, and ending every process on shutdown.
Steps never pass through Ray RPC. ``ParallelConfig.transport="shm"`` (the
default): ranks on the driver's own Ray node are served on the ``mp``
backend's shared-memory rings (one write per step for all of them; fds handed
over by SCM_RIGHTS: ray_shm.py), ranks on other nodes serve our typed ZeroMQ
protocol on ``tcp://<their node's IP>:<port>``; ``"tcp"``: every rank over tcp.
The rank layout log names each rank's transport (``benchmarks/
rpc_roundtrip_ray.py`` measures both, ``mp``, and plain Ray actor calls).

Death of a rank is seen three ways, whichever comes first:
- the rank's own line: for a tcp rank the connection (``RemoteRef``: a ZeroMQ
  monitor sees the TCP connection break when the process dies, and ZMTP
  heartbeats drop a host that falls silent); for a shm rank a pidfd of its
  process and the hand-off's lifeline socket (``ShmRemoteRef``);
- Ray: each host has one ``wait_stopped`` call pending for its whole life;
  Ray fails it, with the cause, when the process or its node dies;
- the host itself: it watches its raylet and stops the worker with an error
  naming rank, node and cause when the node is removed (Ray takes seconds).
Every pending call then fails with an error naming rank, pid, node and cause;
the executor fails, its failure callbacks run once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
from typing import Any

import msgspec

from actorexec.protocol import ConfigError, wire_config
from actorexec.runtime import RemoteRef

from .abstract import Executor
from .ray_layout import RankPlacement, describe_layout, plan_ranks, split_tp_groups
from .ray_shm import SameNodeRings, rank_transports
from .ray_worker_host import RayWorkerHost

logger = logging.getLogger("actorexec.executor.ray")

INSTALL_HINT = "pip install 'actorexec[ray]'"
# ZMTP heartbeat interval: a host silent for three of these is dropped. libzmq's I/O
# thread answers, so only a dead or unreachable host falls silent.
HEARTBEAT_S = 0.3
# After the connection breaks, how long to wait for Ray's word on why before failing
# the rank with "connection closed" alone (Ray reported a killed process in ~10 ms here).
RAY_CAUSE_GRACE_S = 0.25
STOP_CONFIRM_S = 5.0  # shutdown waits this long for Ray to confirm every actor is gone


def import_ray() -> Any:
    """The ``ray`` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"distributed_executor_backend='ray' needs Ray, which is not "
                          f"installed: {INSTALL_HINT}") from exc
    return ray


def ray_death_cause(exc: BaseException) -> str:
    """Ray's reason for an actor's death, in one line (its message lists ids first)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    ids = ("class_name:", "actor_id:", "pid:", "namespace:", "ip:", "name:")
    kept = [line for line in lines[1:] if not line.startswith(ids)] or lines[:1]
    text = " ".join(kept).split(" Some common causes")[0]
    return text if len(text) <= 300 else text[:297] + "..."


class RayDistributedExecutor(Executor):
    """One rank per placement-group bundle on a Ray cluster. Why Ray: it is what people
    already run for many hosts; we borrow its placement and lifecycle, not its RPC."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._ray = import_ray()
        self.refs: list[RemoteRef] = []  # type: ignore[assignment]
        self.placements: list[RankPlacement] = []
        self._pg: Any = None
        self._hosts: list[Any] = []
        self._watches: list[concurrent.futures.Future[Any]] = []
        self._ray_causes: dict[int, str] = {}
        self._lost_timers: dict[int, asyncio.TimerHandle] = {}
        self._owns_ray = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rings: SameNodeRings | None = None  # the same-node ranks' shm, if any

    # -- start ---------------------------------------------------------------------
    async def _start_workers(self) -> None:
        ray, p = self._ray, self.parallel_config
        self._loop = asyncio.get_running_loop()
        await self._connect()
        cuda = self.config.device.device == "cuda"
        bundle = {"CPU": 1.0, "GPU": 1.0} if cuda else {"CPU": 1.0}
        # Recorded before any await: a cancelled start still removes it (and its actors).
        self._pg = ray.util.placement_group([bundle] * self.world_size,
                                            strategy=p.placement_strategy)
        await self._placed(bundle)
        table = ray.util.placement_group_table(self._pg)
        bundle_nodes = [table["bundles_to_node_id"][b] for b in range(self.world_size)]
        tp, pp = p.tensor_parallel_size, p.pipeline_parallel_size
        driver_node = ray.get_runtime_context().get_node_id()
        order = plan_ranks(bundle_nodes, tp, pp, driver_node)
        self._create_hosts(order, cuda)
        described = await asyncio.gather(*(self._get(h.describe.remote(), rank)
                                           for rank, h in enumerate(self._hosts)))
        transports = rank_transports(p.transport, [node for _, node, _ in described],
                                     driver_node)
        self.placements = [RankPlacement(rank, rank // tp, rank % tp, order[rank], node_id,
                                         node_ip, pid, transports[rank])
                           for rank, (node_ip, node_id, pid) in enumerate(described)]
        layout = describe_layout(self.placements, p.placement_strategy, tp)
        (logger.warning if split_tp_groups(self.placements, tp) else logger.info)("%s", layout)
        init_method = None
        if self.world_size > 1:  # torch.distributed meets at rank 0's node IP
            port = await self._get(self._hosts[0].free_port.remote(), 0)
            ip = self.placements[0].node_ip
            init_method = f"tcp://{f'[{ip}]' if ':' in ip else ip}:{port}"
        endpoints = await self._start_hosts(init_method)
        for rank, endpoint in enumerate(endpoints):
            place = self.placements[rank]
            kill = functools.partial(self._kill_host, rank)
            if self._rings is not None and place.transport == "shm":
                self.refs.append(self._rings.ref(rank, place.node_ip, p.worker_cls, kill,
                                                 self._on_worker_death,
                                                 self._on_connection_lost))
                continue
            self.refs.append(await RemoteRef.connect(
                endpoint, rank, place.pid, place.node_ip, kill=kill, backend=p.zmq_backend,
                heartbeat_s=HEARTBEAT_S, on_death=self._on_worker_death,
                on_connection_lost=self._on_connection_lost))
        await asyncio.gather(*(ref.wait_ready(p.worker_start_timeout_s) for ref in self.refs))

    async def _start_hosts(self, init_method: str | None) -> list[str]:
        """Every host builds its worker and serves it; the same-node ones collect their rings
        meanwhile. Returns each rank's endpoint."""
        p = self.parallel_config
        local = [place.rank for place in self.placements if place.transport == "shm"]
        if local:
            self._rings = SameNodeRings(local)  # recorded at once: shutdown frees it
        config = wire_config(self.config)
        starts = [self._get(host.start.remote(
            p.worker_cls, msgspec.msgpack.encode(
                {"config": config, "rank": rank, "distributed_init_method": init_method}),
            rank, p.zmq_backend, **(self._rings.start_kwargs(rank) if rank in local else {})),
            rank) for rank, host in enumerate(self._hosts)]
        if self._rings is None:
            return list(await asyncio.gather(*starts))
        # Owned here: a host that fails to start cancels it, and it fails the start at once
        # if a host never comes for its fds.
        handout = asyncio.ensure_future(self._rings.hand_out(
            {rank: self.placements[rank].pid for rank in local}, p.worker_start_timeout_s))
        try:
            *endpoints, _ = await asyncio.gather(*starts, handout)
        finally:
            if not handout.done():
                handout.cancel()
                handout.add_done_callback(lambda t: t.cancelled() or t.exception())
        return endpoints

    async def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            return
        address = self.parallel_config.ray_address or os.environ.get("RAY_ADDRESS")
        # None given: a fresh local one-node cluster ("local"; never one found lying around
        # on this machine), ours to stop at shutdown.
        self._owns_ray = address is None
        await asyncio.to_thread(functools.partial(
            ray.init, address=address or "local", logging_level=logging.WARNING,
            **({} if address else {"include_dashboard": False})))

    async def _placed(self, bundle: dict[str, float]) -> None:
        p = self.parallel_config
        ready = self._pg.ready().future()
        try:
            await asyncio.wait_for(asyncio.wrap_future(ready), p.worker_start_timeout_s)
        except TimeoutError:
            raise TimeoutError(
                f"Ray could not place {self.world_size} bundles of {bundle} with strategy "
                f"{p.placement_strategy} within {p.worker_start_timeout_s} s (cluster "
                f"resources: {self._ray.cluster_resources()}); add nodes, lower "
                "tensor/pipeline_parallel_size, or pick another placement_strategy") from None

    def _create_hosts(self, order: list[int], cuda: bool) -> None:
        """One Ray actor per rank in its bundle; each is recorded as it is created (no
        await here), with its life-long ``wait_stopped`` call as the death watch."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        host_cls = self._ray.remote(RayWorkerHost)
        for rank, bundle in enumerate(order):
            host = host_cls.options(
                num_cpus=1, num_gpus=1 if cuda else 0, max_concurrency=4, max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self._pg, placement_group_bundle_index=bundle)).remote()
            self._hosts.append(host)
            watch = host.wait_stopped.remote().future()
            watch.add_done_callback(functools.partial(self._from_ray_thread, rank))
            self._watches.append(watch)

    async def _get(self, object_ref: Any, rank: int) -> Any:
        """A lifecycle call's result; a rank that dies meanwhile raises naming it."""
        try:
            return await asyncio.wrap_future(object_ref.future())
        except self._ray.exceptions.RayError as exc:
            node = self.placements[rank].node_ip if rank < len(self.placements) else "?"
            raise RuntimeError(f"rank {rank} on node {node} failed to start: "
                               f"{ray_death_cause(exc)}") from exc

    # -- death -----------------------------------------------------------------------
    def _from_ray_thread(self, rank: int, watch: concurrent.futures.Future[Any]) -> None:
        """Runs on a Ray thread (or at once if already done): hand over to our loop."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                loop.call_soon_threadsafe(self._on_host_stopped, rank, watch)

    def _on_host_stopped(self, rank: int, watch: concurrent.futures.Future[Any]) -> None:
        """Ray's word on a host: its ``wait_stopped`` returned (the worker stopped) or
        failed (the process or its node died)."""
        if self._shut_down:
            return
        exc = watch.exception()
        if exc is not None:
            cause = f"died: {ray_death_cause(exc)}"
        else:
            outcome = watch.result()
            cause = f"stopped: {outcome}" if outcome else "stopped serving unasked"
        self._ray_causes[rank] = cause
        if rank < len(self.refs):
            timer = self._lost_timers.pop(rank, None)
            if timer is not None:
                timer.cancel()
            self._declare(self.refs[rank], cause)

    def _on_connection_lost(self, ref: RemoteRef) -> None:
        """The connection broke: the rank's calls are lost. Wait briefly for Ray's cause."""
        if self._shut_down:
            return
        cause = self._ray_causes.get(ref.rank)
        if cause is not None:
            self._declare(ref, cause)
        else:
            assert self._loop is not None
            self._lost_timers[ref.rank] = self._loop.call_later(
                RAY_CAUSE_GRACE_S, self._declare, ref,
                f"lost: {ref.lost_cause}; Ray gave no cause within {RAY_CAUSE_GRACE_S} s")

    def _declare(self, ref: RemoteRef, cause: str) -> None:
        self._lost_timers.pop(ref.rank, None)
        if ref.dead is not None or ref.closing:
            return
        reason = ref.fatal_reason
        node_id = self.placements[ref.rank].node_id[:8]
        ref.declare_dead(ref.died(f"(node id {node_id}) {cause}"
                                  + (f"; it reported: {reason}" if reason else "")))
        self._kill_host(ref.rank)

    def _kill_host(self, rank: int) -> None:
        try:
            self._ray.kill(self._hosts[rank], no_restart=True)
        except Exception as exc:  # already gone, or Ray is shutting down
            logger.debug("ray.kill of rank %d: %r", rank, exc)

    # -- stop ------------------------------------------------------------------------
    async def _stop_workers(self, grace_s: float) -> None:
        try:
            if self.failure is None and self.refs and grace_s > 0:
                await self._shut_down_politely(grace_s)
        finally:
            # Also on cancellation or error: synchronous, so nothing outlives the executor.
            for timer in self._lost_timers.values():
                timer.cancel()
            for ref in self.refs:
                ref.close_now()
            if self._rings is not None:
                self._rings.close()
            self._release()
        await self._confirm_stopped()

    def _release(self) -> None:
        """Kill every host and remove the placement group (Ray frees the bundles)."""
        for rank in range(len(self._hosts)):
            self._kill_host(rank)
        if self._pg is not None:
            try:
                self._ray.util.remove_placement_group(self._pg)
            except Exception as exc:
                logger.warning("removing the placement group: %r", exc)

    async def _confirm_stopped(self) -> None:
        """Wait (bounded) until Ray reports every host gone; then stop a Ray we started."""
        if self._watches:
            waits = [asyncio.wrap_future(w) for w in self._watches]
            _, pending = await asyncio.wait(waits, timeout=STOP_CONFIRM_S)
            for fut in waits:  # their outcomes were read (or are moot) by now
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            if pending:
                logger.warning("Ray has not confirmed %d worker(s) gone after %.0f s",
                               len(pending), STOP_CONFIRM_S)
        if self._owns_ray:
            await asyncio.to_thread(self._ray.shutdown)
