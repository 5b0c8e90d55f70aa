"""The executor contract on the ray backend, on a real two-node Ray cluster.

The same suite as ``uni``/``mp`` (test_executor.py: call order, non_block,
unique_reply_rank, deadlines, typed remote errors, allow-list), on both
transports: ``shm`` (the default: rank 0, on the driver's node, over the
shared-memory rings; rank 1, on the other node, over tcp) and ``tcp`` (both
over tcp). Plus what Ray adds: ranks placed one per node, a same-node rank
really on the rings and the other served on its node's IP only; garbage
frames on a tcp socket; nothing left (process, actor, placement group, ring,
hand-off socket) after shutdown, a cancelled create or a cancelled caller; a
killed rank process (on shm or tcp) and a removed node each fail every
pending call within a second, naming rank, node and cause. One cluster for
the whole module (the kill and node tests come last: they take a node down).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import msgspec
import pytest
import zmq
import zmq.asyncio

from actorexec.actors.executor import Executor, RayDistributedExecutor
from actorexec.protocol import (
    ActorDiedError,
    ActorexecError,
    ExecutorFailedError,
    Failure,
    InvalidRequestError,
    MethodNotAllowedError,
    ModelRunnerOutput,
    RemoteError,
)
from actorexec.protocol.codec import EnvelopeCodec
from actorexec.protocol.envelopes import Call, Result
from actorexec.runtime import RemoteRef
from actorexec.runtime.child import import_path
from actorexec.runtime.shm_remote_ref import ShmRemoteRef

from .ray_cluster import (
    NODE_CPUS,
    alive_hosts,
    handoff_sockets,
    live_placement_groups,
    memfds,
    ray,
    start_cluster,
    tcp_listeners,
    wait_nothing_left,
)
from .test_executor import make_config, step
from .workers import record_pid

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    yield from start_cluster()


def ray_config(tp: int = 1, pp: int = 1, strategy: str = "STRICT_SPREAD", **parallel: object):
    return make_config("ray", tp, pp, placement_strategy=strategy, **parallel)


@pytest.fixture(params=["shm", "tcp"])
async def ray1(cluster, request):
    """One rank, on the driver's node (the other node's CPUs are held meanwhile): over the
    rings with ``shm``, over tcp with ``tcp``."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    driver_node = ray.get_runtime_context().get_node_id()
    [other] = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != driver_node]
    # By its importable name: Ray's workers import it from there.
    placeholder = import_path("tests.actors.executor.workers:Placeholder")
    holder = ray.remote(placeholder).options(
        num_cpus=NODE_CPUS, scheduling_strategy=NodeAffinitySchedulingStrategy(other, soft=False)
    ).remote()
    try:
        await holder.ready.remote()
        async with await Executor.create(ray_config(transport=request.param)) as ex:
            [place] = ex.placements
            assert place.node_id == driver_node and place.transport == request.param
            yield ex
    finally:
        ray.kill(holder)
    await wait_nothing_left([p.pid for p in ex.placements])


@pytest.fixture(params=["shm", "tcp"])
async def ray2(cluster, request):
    """Two ranks, one per node (STRICT_SPREAD): rank 0 on the driver's node. With ``shm``
    rank 0 is on the rings and rank 1 on tcp; with ``tcp`` both are on tcp."""
    async with await Executor.create(ray_config(tp=2, transport=request.param)) as ex:
        yield ex
    await wait_nothing_left([p.pid for p in ex.placements])


@pytest.mark.timeout(120)
async def test_ranks_land_one_per_node_and_tcp_ranks_serve_on_their_node_ip_only(ray2):
    assert isinstance(ray2, RayDistributedExecutor)
    nodes = {p.node_id for p in ray2.placements}
    assert len(nodes) == 2, ray2.placements
    assert await ray2.collective_rpc("history") == [["init_device", "load_model"]] * 2
    assert await ray2.collective_rpc("whoami") == [[p.rank, p.pid] for p in ray2.placements]
    for place, ref in zip(ray2.placements, ray2.refs, strict=True):
        if place.transport == "shm":
            continue
        host, _, port = ref.transport.endpoint.removeprefix("tcp://").rpartition(":")
        assert host == place.node_ip
        # The worker's socket listens on the node's IP, never on all interfaces.
        assert (place.node_ip, int(port)) in tcp_listeners(place.pid)
        assert ("0.0.0.0", int(port)) not in tcp_listeners(place.pid)


@pytest.mark.timeout(120)
async def test_a_rank_on_the_drivers_node_uses_the_shm_rings_and_one_elsewhere_tcp(ray2):
    shm = ray2.parallel_config.transport == "shm"
    driver_node = ray.get_runtime_context().get_node_id()
    local, remote = ray2.placements
    assert local.node_id == driver_node != remote.node_id
    assert [p.transport for p in ray2.placements] == (["shm", "tcp"] if shm else ["tcp"] * 2)
    # The executor's ref types say which path calls take ...
    assert isinstance(ray2.refs[0], ShmRemoteRef) is shm
    assert isinstance(ray2.refs[1], RemoteRef) and not isinstance(ray2.refs[1], ShmRemoteRef)
    assert ray2.refs[1].transport.endpoint.startswith(f"tcp://{remote.node_ip}:")
    # ... and the host processes hold the rings (memfds) only where shm is used: rank 0's
    # host holds the call ring and its own reply ring; rank 1's none.
    assert memfds(local.pid) == (["actorexec-calls", "actorexec-replies-0"] if shm else [])
    assert memfds(remote.pid) == []
    assert ray2.refs[0].transport.endpoint.startswith("shm://" if shm else "tcp://")
    outs = await asyncio.gather(*(ray2.execute_model(step(i)) for i in range(50)))
    assert [o.step_id for o in outs] == list(range(50))
    assert handoff_sockets() == []  # the hand-off stopped listening once both had their fds


@pytest.mark.timeout(120)
async def test_the_rank_layout_names_each_ranks_transport_and_calls_a_split_tp_group_slow(
        cluster, caplog):
    with caplog.at_level(logging.INFO, logger="actorexec.executor.ray"):
        async with await Executor.create(ray_config(tp=2)) as ex:
            pids = [p.pid for p in ex.placements]
    text = caplog.text
    assert "ray layout (STRICT_SPREAD, 2 ranks, tp=2)" in text
    rank0, rank1 = ex.placements
    assert f"rank 0 on {rank0.node_ip} ({rank0.node_id[:8]}) pid {rank0.pid} over shm" in text
    assert f"rank 1 on {rank1.node_ip} ({rank1.node_id[:8]}) pid {rank1.pid} over tcp" in text
    assert "span nodes" in text
    await wait_nothing_left(pids)


@pytest.mark.timeout(120)
async def test_calls_reach_every_rank_in_call_order_across_many_concurrent_calls(ray2):
    futs = [ray2.collective_rpc("echo", (i,)) for i in range(300)]
    assert [r[0] for r in await asyncio.gather(*futs)] == list(range(300))
    assert [h[2:] for h in await ray2.collective_rpc("history")] == [list(range(300))] * 2


@pytest.mark.timeout(120)
async def test_non_block_and_unique_reply_rank(ray2):
    futs = ray2.collective_rpc("whoami", non_block=True)
    assert len(futs) == 2 and [(await f)[0] for f in futs] == [0, 1]
    assert await ray2.collective_rpc("whoami", unique_reply_rank=1) == [1, ray2.placements[1].pid]
    assert await ray2.collective_rpc("fail_on_rank", (5,), unique_reply_rank=0) == 0
    with pytest.raises(InvalidRequestError):  # a failure on any rank fails the call
        await ray2.collective_rpc("fail_on_rank", (1, 0.3), unique_reply_rank=0)


@pytest.mark.timeout(120)
async def test_steps_return_the_output_ranks_result_in_order_and_bad_input_is_refused(ray2):
    # one slot per pipeline stage, plus one with async scheduling (the default)
    assert ray2.output_rank == 0 and ray2.max_concurrent_batches == 1 + int(
        ray2.config.scheduler.async_scheduling)
    outs = await asyncio.gather(*(ray2.execute_model(step(i)) for i in range(20)))
    assert all(isinstance(o, ModelRunnerOutput) for o in outs)
    assert [o.step_id for o in outs] == list(range(20))
    with pytest.raises(InvalidRequestError):  # refused by every rank: not divergence
        await ray2.execute_model(step(-1))
    assert (await ray2.execute_model(step(21))).step_id == 21 and not ray2.is_failed
    kv = await ray2.initialize_kv_cache()
    assert kv.num_blocks == (1 << 20) // (2 * 16 * 2 * 8 * 2)  # the smaller rank's budget


@pytest.mark.timeout(120)
async def test_a_call_past_its_deadline_raises_timeout_and_the_rank_keeps_serving(ray1):
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        await ray1.collective_rpc("slow", (1.0,), timeout=0.3)
    assert time.monotonic() - start < 0.8
    with pytest.raises(TimeoutError):  # reaches the worker after its deadline: answered unrun
        await ray1.collective_rpc("echo", ("late",), timeout=0.1)
    [health] = await ray1.check_health(timeout=10)
    assert health.rank == 0 and not ray1.is_failed


@pytest.mark.timeout(120)
async def test_remote_errors_arrive_typed_and_only_allow_listed_methods_run(ray2):
    with pytest.raises(ValueError, match="boom") as info:
        await ray2.collective_rpc("fail", ("boom",))
    assert isinstance(info.value, RemoteError) and info.value.remote_type == "ValueError"
    assert "in fail" in info.value.remote_traceback
    for name in ("offload", "request_stop", "__init__", "log"):
        with pytest.raises(MethodNotAllowedError):
            ray2.collective_rpc(name)
    with pytest.raises(TypeError):
        ray2.collective_rpc("echo", (1, 2))
    with pytest.raises(MethodNotAllowedError):  # no callables unless the config allows them
        ray2.collective_rpc(record_pid, ("x",))
    assert await ray2.collective_rpc("history") == [["init_device", "load_model"]] * 2


@pytest.mark.timeout(120)
async def test_garbage_frames_on_a_workers_socket_get_typed_failures_and_run_nothing(ray2):
    """On rank 1's tcp socket (garbage in the rings: tests/runtime/test_shm_*)."""
    codec = EnvelopeCodec()
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(ray2.refs[1].transport.endpoint)

    async def exchange(*frames: bytes) -> object:
        await sock.send_multipart(list(frames))
        return codec.decode((await asyncio.wait_for(sock.recv_multipart(), 5))[0])

    try:
        failure = await exchange(b"\xc1garbage", b"more")
        assert isinstance(failure, Failure) and failure.call_id == -1
        assert "ProtocolError" in failure.exc_type
        failure = await exchange(codec.encode(Call(7, "echo")), msgspec.msgpack.encode({"no": 1}))
        assert isinstance(failure, Failure) and failure.call_id == 7
        failure = await exchange(codec.encode(Call(8, "log")))  # an attribute, not on the list
        assert isinstance(failure, Failure) and "MethodNotAllowed" in failure.exc_type
        ok = await exchange(codec.encode(Call(9, "echo")), msgspec.msgpack.encode({"value": 5}))
        assert isinstance(ok, Result) and ok.call_id == 9
    finally:
        sock.close()
    assert await ray2.collective_rpc("history") == [["init_device", "load_model"],
                                                    ["init_device", "load_model", 5]]
    assert not ray2.is_failed


@pytest.mark.timeout(120)
async def test_shutdown_leaves_no_process_actor_or_placement_group(cluster):
    async with await Executor.create(ray_config(tp=2)) as ex:
        pids = [p.pid for p in ex.placements]
        assert len(alive_hosts()) == 2 and len(live_placement_groups()) == 1
    # shutdown waited for Ray to confirm every actor gone
    assert alive_hosts() == [] and live_placement_groups() == []
    assert memfds(os.getpid()) == [] and handoff_sockets() == []  # rings freed, none listens
    await wait_nothing_left(pids, timeout_s=5)


@pytest.mark.timeout(120)
async def test_a_create_cancelled_midway_leaves_nothing(cluster):
    task = asyncio.ensure_future(Executor.create(ray_config(tp=2)))
    deadline = time.monotonic() + 30
    while not alive_hosts() and time.monotonic() < deadline:  # hosts exist: mid-start
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_nothing_left([])
    assert memfds(os.getpid()) == [] and handoff_sockets() == []


@pytest.mark.timeout(120)
async def test_a_caller_cancelled_inside_async_with_leaves_nothing(cluster):
    started = asyncio.Event()
    pids: list[int] = []

    async def caller() -> None:
        async with await Executor.create(ray_config(tp=2)) as ex:
            pids.extend(p.pid for p in ex.placements)
            started.set()
            await ex.collective_rpc("slow", (30.0,))

    task = asyncio.ensure_future(caller())
    await asyncio.wait_for(started.wait(), 60)
    await asyncio.sleep(0.2)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - cancelled_at < 3.0
    await wait_nothing_left(pids)


def assert_names_rank_node_and_cause(error: BaseException, rank: int, node_ip: str,
                                     *causes: str) -> None:
    assert isinstance(error, ActorexecError), repr(error)
    text = str(error)
    assert f"rank {rank}" in text and node_ip in text, text
    assert any(cause in text for cause in causes), text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("victim_rank", [0, 1], ids=["shm-rank", "tcp-rank"])
async def test_killing_one_ranks_process_fails_every_pending_call_within_a_second(cluster,
                                                                                  victim_rank):
    async with await Executor.create(ray_config(tp=2)) as ex:
        assert ex.placements[victim_rank].transport == ("shm", "tcp")[victim_rank]
        fired: list[int] = []
        ex.register_failure_callback(lambda: fired.append(1))
        pending = [ex.collective_rpc("slow", (30.0,)) for _ in range(3)]
        pending.append(ex.execute_model(step(1)))
        await asyncio.sleep(0.3)
        victim = ex.placements[victim_rank]
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
        took = time.monotonic() - killed_at
        print(f"rank process SIGKILL -> every pending call failed in {took * 1000:.0f} ms")
        assert took < 1.0
        for error in results:
            assert isinstance(error, ActorDiedError), results
            assert error.rank == victim_rank and error.pid == victim.pid
            assert error.node == victim.node_ip
            # Ray's cause (seen here ~10 ms after the kill), or the rank's own line's (the
            # tcp connection, the shm rank's pidfd) if Ray had said nothing 0.25 s later.
            assert_names_rank_node_and_cause(error, victim_rank, victim.node_ip,
                                             "worker process has died", "connection closed",
                                             "process exited")
        await asyncio.sleep(0.2)
        assert fired == [1] and ex.is_failed
        with pytest.raises(ExecutorFailedError):
            ex.collective_rpc("echo", (1,))
        pids = [p.pid for p in ex.placements]
    await wait_nothing_left(pids)
    assert memfds(os.getpid()) == [] and handoff_sockets() == []


@pytest.mark.timeout(180)
async def test_removing_a_node_fails_every_pending_step_within_a_second(cluster):
    async with await Executor.create(ray_config(tp=2)) as ex:
        fired: list[int] = []
        ex.register_failure_callback(lambda: fired.append(1))
        victim = ex.placements[1]
        [node] = [n for n in cluster.list_all_nodes() if n.node_id == victim.node_id]
        assert node is not cluster.head_node  # the driver's node hosts rank 0
        pending = [ex.collective_rpc("slow", (30.0,))]  # holds the work thread: steps wait
        pending += [ex.execute_model(step(i)) for i in range(3)]
        await asyncio.sleep(0.3)
        removed_at = time.monotonic()
        # Not graceful: the raylet and its helpers are killed; Ray itself notices the
        # node's actors only seconds later.
        await asyncio.to_thread(cluster.remove_node, node, False)
        results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 10)
        took = time.monotonic() - removed_at
        print(f"node removed -> every pending call failed in {took * 1000:.0f} ms")
        assert took < 1.0
        assert all(isinstance(r, BaseException) for r in results), results
        assert_names_rank_node_and_cause(results[0], 1, victim.node_ip, "Ray node went away")
        await asyncio.sleep(0.2)
        assert fired == [1] and ex.is_failed
        pids = [p.pid for p in ex.placements]
    await wait_nothing_left(pids)
    cluster.add_node(num_cpus=2)  # for any test after this one
