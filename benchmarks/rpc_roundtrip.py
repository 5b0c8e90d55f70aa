"""Round trip of ``collective_rpc`` to mp workers vs. a raw pyzmq DEALER/ROUTER echo.

Measures median and p99 of: a no-op (``check_health``, answered from each
worker's loop) and a 256-request decode ``SchedulerOutput`` (``execute_model``
on a test worker that returns a small ModelRunnerOutput without a model; every
rank answers, the output rank with the output), to 1 and 2 workers, on the
default loop and on uvloop. The baseline echoes the same encoded bytes through one raw pyzmq
DEALER/ROUTER pair (thread peer) in the same run.
Usage: python benchmarks/rpc_roundtrip.py [--iters 2000] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

import msgspec
import zmq
import zmq.asyncio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from actorexec.actors.executor import Executor
from actorexec.protocol import (
    CachedRequestData,
    Config,
    ModelConfig,
    ParallelConfig,
    SchedulerOutput,
)
from actorexec.runtime import run

WORKER = "tests.actors.executor.workers:EchoWorker"


def decode_step(n: int = 256) -> SchedulerOutput:
    ids = [f"req-{i}" for i in range(n)]
    cached = CachedRequestData(req_ids=ids, new_token_ids=[[i] for i in range(n)],
                               new_block_ids=[[]] * n,
                               num_computed_tokens=[100 + i for i in range(n)])
    return SchedulerOutput(step_id=1, scheduled_cached_reqs=cached,
                           num_scheduled_tokens=dict.fromkeys(ids, 1))


def stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"median_us": statistics.median(s) * 1e6, "p99_us": s[int(0.99 * (len(s) - 1))] * 1e6}


async def bench_executor(workers: int, iters: int) -> dict[str, dict[str, float]]:
    config = Config(model=ModelConfig(model="unused"), parallel=ParallelConfig(
        tensor_parallel_size=workers, distributed_executor_backend="mp", worker_cls=WORKER))
    so = decode_step()
    out = {}
    async with await Executor.create(config) as ex:
        for name, call in (("noop", lambda: ex.collective_rpc("check_health")),
                           ("decode256", lambda: ex.execute_model(so))):
            for _ in range(iters // 10):
                await call()
            samples = []
            for _ in range(iters):
                t0 = time.perf_counter()
                await call()
                samples.append(time.perf_counter() - t0)
            out[name] = stats(samples)
    return out


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


async def bench_all(iters: int) -> dict[str, object]:
    results: dict[str, object] = {"raw_pyzmq_echo": await bench_raw(iters)}
    for workers in (1, 2):
        results[f"mp_{workers}_workers"] = await bench_executor(workers, iters)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--out", default=os.path.join(  # a new file per run: results are kept
        os.path.dirname(__file__), "results",
        f"rpc_roundtrip-{time.strftime('%Y%m%d-%H%M%S')}.json"))
    args = parser.parse_args()
    report = {"iters": args.iters, "cpus": os.cpu_count(), "python": sys.version.split()[0],
              "loops": {}}
    for loop_name, use_uvloop in (("default", False), ("uvloop", True)):
        report["loops"][loop_name] = run(bench_all(args.iters), use_uvloop=use_uvloop)
    print(f"{'loop':8} {'target':16} {'call':10} {'median us':>10} {'p99 us':>10} {'x raw':>7}")
    for loop_name, targets in report["loops"].items():
        raw = targets["raw_pyzmq_echo"]
        for target, calls in targets.items():
            for call, s in calls.items():
                ratio = s["median_us"] / raw[call]["median_us"]
                print(f"{loop_name:8} {target:16} {call:10} {s['median_us']:10.1f} "
                      f"{s['p99_us']:10.1f} {ratio:7.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
