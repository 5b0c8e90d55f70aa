"""Round trip of ``collective_rpc`` to mp and ray workers vs. raw pyzmq and plain Ray calls.

(The `ray` backend comparison; ``rpc_roundtrip.py`` measures the same-host
transports, shm and ipc, against vLLM's queue.)

Measures median and p99 of: a no-op (``check_health``, answered from each
worker's loop) and a 256-request decode ``SchedulerOutput`` (``execute_model``
on a test worker that returns a small ModelRunnerOutput without a model; every
rank answers, the output rank with the output), to 1 and 2 workers, on the
default loop and on uvloop, for the ``mp`` backend (its default transport, the
shared-memory rings) and, when Ray is installed, the ``ray`` backend on a local
one-node Ray cluster: with its default transport (every rank is on the
driver's node, so on the same rings as ``mp``) and with ``transport="tcp"``
(tcp to the node IP, as ranks on other nodes are driven). Baselines in the
same run: the same encoded bytes echoed
through one raw pyzmq DEALER/ROUTER pair (thread peer), and sent as plain Ray
actor calls (``actor.execute_model.remote(bytes)`` to every rank, awaited
together; the actor decodes the step and returns the same encoded reply our
worker sends).
Usage: python benchmarks/rpc_roundtrip_ray.py [--iters 2000] [--no-ray] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable

import msgspec
import zmq
import zmq.asyncio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from actorexec.actors.executor import Executor
from actorexec.protocol import (
    Config,
    ModelConfig,
    ModelRunnerOutput,
    ParallelConfig,
    SchedulerOutput,
)
from actorexec.runtime import run
from benchmarks.rpc_roundtrip import decode_step  # the same 256-request step

WORKER = "tests.actors.executor.workers:EchoWorker"


def stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"median_us": statistics.median(s) * 1e6, "p99_us": s[int(0.99 * (len(s) - 1))] * 1e6}


async def timed(call: Callable[[], Awaitable[object]], iters: int) -> dict[str, float]:
    for _ in range(iters // 10):
        await call()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - t0)
    return stats(samples)


async def bench_executor(workers: int, iters: int, backend: str = "mp",
                         transport: str = "shm") -> dict[str, dict[str, float]]:
    config = Config(model=ModelConfig(model="unused"), parallel=ParallelConfig(
        tensor_parallel_size=workers, distributed_executor_backend=backend, worker_cls=WORKER,
        transport=transport))
    so = decode_step()
    async with await Executor.create(config) as ex:
        return {"noop": await timed(lambda: ex.collective_rpc("check_health"), iters),
                "decode256": await timed(lambda: ex.execute_model(so), iters)}


class PlainRayWorker:
    """The baseline: a Ray actor called with Ray's own RPC. It decodes the step as our
    worker does and returns the same encoded ModelRunnerOutput our output rank sends."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.decoder = msgspec.msgpack.Decoder(SchedulerOutput)

    def noop(self) -> None:
        return None

    def execute_model(self, payload: bytes) -> bytes | None:
        so = self.decoder.decode(payload)
        if self.rank != 0:
            return None
        return msgspec.msgpack.encode(ModelRunnerOutput.from_lists(
            so.step_id, [[so.step_id]] * so.num_reqs))


async def bench_plain_ray(workers: int, iters: int) -> dict[str, dict[str, float]]:
    import ray

    actors = [ray.remote(PlainRayWorker).options(num_cpus=0).remote(rank)
              for rank in range(workers)]
    payload = msgspec.msgpack.encode(decode_step())
    try:
        return {"noop": await timed(lambda: asyncio.gather(*(a.noop.remote() for a in actors)),
                                    iters),
                "decode256": await timed(lambda: asyncio.gather(
                    *(a.execute_model.remote(payload) for a in actors)), iters)}
    finally:
        for actor in actors:
            ray.kill(actor)


def _echo_peer(endpoint: str, stop: threading.Event) -> None:
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.bind(endpoint)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while not stop.is_set():
        if poller.poll(100):
            sock.send_multipart(sock.recv_multipart())
    sock.close(0)


async def bench_raw(iters: int) -> dict[str, dict[str, float]]:
    endpoint = f"ipc:///tmp/actorexec-bench-{os.getpid()}.sock"
    stop = threading.Event()
    peer = threading.Thread(target=_echo_peer, args=(endpoint, stop))
    peer.start()
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    out = {}
    try:
        for name, payload in (("noop", b"\x00" * 16),
                              ("decode256", msgspec.msgpack.encode(decode_step()))):
            for _ in range(iters // 10):
                await sock.send_multipart([payload])
                await sock.recv_multipart()
            samples = []
            for _ in range(iters):
                t0 = time.perf_counter()
                await sock.send_multipart([payload])
                await sock.recv_multipart()
                samples.append(time.perf_counter() - t0)
            out[name] = stats(samples)
    finally:
        sock.close()
        stop.set()
        peer.join()
        if os.path.exists(endpoint[6:]):
            os.unlink(endpoint[6:])
    return out


async def bench_all(iters: int, with_ray: bool) -> dict[str, object]:
    results: dict[str, object] = {"raw_pyzmq_echo": await bench_raw(iters)}
    for workers in (1, 2):  # interleaved: each backend's rows are taken close in time
        results[f"mp_{workers}_workers"] = await bench_executor(workers, iters)
        if with_ray:
            results[f"ray_{workers}_workers"] = await bench_executor(workers, iters, "ray")
            results[f"ray_tcp_{workers}_workers"] = await bench_executor(workers, iters, "ray",
                                                                         "tcp")
            results[f"plain_ray_{workers}_workers"] = await bench_plain_ray(workers, iters)
    return results


def print_ratios(report: dict[str, dict[str, dict[str, dict[str, float]]]]) -> None:
    """The targets of issue 11: ray within 10% of mp, and >= 2x faster than plain Ray."""
    print(f"{'loop':8} {'workers':>7} {'call':10} {'ray/mp':>7} {'ray_tcp/mp':>10} "
          f"{'plain/ray':>9}")
    for loop_name, targets in report.items():
        for workers in (1, 2):
            if f"ray_{workers}_workers" not in targets:
                continue
            mp, ray = targets[f"mp_{workers}_workers"], targets[f"ray_{workers}_workers"]
            ray_tcp = targets[f"ray_tcp_{workers}_workers"]
            plain = targets[f"plain_ray_{workers}_workers"]
            for call in ("noop", "decode256"):
                med = {name: row[call]["median_us"] for name, row in
                       (("mp", mp), ("ray", ray), ("ray_tcp", ray_tcp), ("plain", plain))}
                print(f"{loop_name:8} {workers:7} {call:10} {med['ray'] / med['mp']:7.2f} "
                      f"{med['ray_tcp'] / med['mp']:10.2f} {med['plain'] / med['ray']:9.2f}")


def start_ray() -> bool:
    """A local one-node Ray cluster whose workers can import the test worker; False if
    Ray is not installed."""
    try:
        import ray
    except ImportError:
        print("ray is not installed: the ray rows are skipped (pip install 'actorexec[ray]')")
        return False
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING",
             log_to_driver=False)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--no-ray", action="store_true", help="skip the ray rows")
    parser.add_argument("--out", default=os.path.join(  # a new file per run: results are kept
        os.path.dirname(__file__), "results",
        f"rpc_roundtrip_ray-{time.strftime('%Y%m%d-%H%M%S')}.json"))
    args = parser.parse_args()
    report = {"iters": args.iters, "cpus": os.cpu_count(), "python": sys.version.split()[0],
              "loops": {}}
    with_ray = not args.no_ray and start_ray()
    try:
        for loop_name, use_uvloop in (("default", False), ("uvloop", True)):
            report["loops"][loop_name] = run(bench_all(args.iters, with_ray),
                                             use_uvloop=use_uvloop)
    finally:
        if with_ray:
            import ray

            ray.shutdown()
    print(f"{'loop':8} {'target':22} {'call':10} {'median us':>10} {'p99 us':>10} {'x raw':>7}")
    for loop_name, targets in report["loops"].items():
        raw = targets["raw_pyzmq_echo"]
        for target, calls in targets.items():
            for call, s in calls.items():
                ratio = s["median_us"] / raw[call]["median_us"]
                print(f"{loop_name:8} {target:22} {call:10} {s['median_us']:10.1f} "
                      f"{s['p99_us']:10.1f} {ratio:7.2f}")
    print_ratios(report["loops"])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
