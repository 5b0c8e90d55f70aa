"""Per-step control plane: round trip and CPU of actorexec's executor vs vLLM's shm queue.

For 1 and 2 workers, each system runs the same phases: a 256-request decode
``SchedulerOutput`` out and a 256-entry ``ModelRunnerOutput`` back,
back-to-back (``b2b``), with a 5 ms gap between steps (``gap5ms``, like a GPU
step) and a 1.2 s gap (``gap1200ms``); an empty message back-to-back
(``empty``); and no traffic at all (``idle``, CPU only). Per phase: median and
p99 round trip, and the CPU the workers (each, on average) and the driver
used, in % of one core over the phase's wall time (psutil).

Systems: actorexec's ``mp`` executor over shared memory (``shm``, the default;
``shm-nopace``: the same with paced waits off, ``ACTOREXEC_SHM_PACE=0``;
``shm-py``: the same with the rings' Python implementation instead of their
compiled core, in the driver and, by ``ACTOREXEC_SHM_PURE_PYTHON=1``, the workers)
and over ZeroMQ ipc (the previous default), with the test ``EchoWorker`` (the
real Worker, no model; every rank answers a step, the output rank with the
output); vLLM's ``shm_broadcast.MessageQueue`` wired as vLLM's multiprocess
executor wires it (``vllm_mq_baseline.py``; only the output rank answers a
step), when vLLM imports: ``vllm`` carries the step and the output as vLLM
0.33 lays them out (per-request Python lists and dicts, pickled), ``vllm-same``
carries actorexec's own objects (int32 columns, pickled), so that the
transports alone are compared; and a raw pyzmq DEALER/ROUTER echo of
actorexec's encoded step between two processes (1 worker only). Ratios are
against ``vllm``. Repetitions are interleaved; the table shows the median of
the per-run medians. actorexec's driver runs on the loop ``actorexec.runtime.run``
gives it, as the engine's does: uvloop when installed; a system name ending in
``-asyncio`` (``shm-asyncio``) runs it on asyncio's own loop instead.

Usage: python benchmarks/rpc_roundtrip.py [--reps 3] [--iters 2000] [--gap-iters 300]
       [--long-gap-iters 8] [--systems shm,ipc,vllm,vllm-same,zmq] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec
import psutil
import zmq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from actorexec.actors.executor import Executor
from actorexec.protocol import (
    Config,
    ModelConfig,
    ParallelConfig,
    SchedulerOutput,
)
from actorexec.runtime import run
from actorexec.runtime.loop import loop_factory
from actorexec.runtime.transport import shm_ring_compiled

WORKER = "tests.actors.executor.workers:EchoWorker"
Phase = tuple[str, int, float]  # name, calls, gap between calls (s)


def decode_step(n: int = 256) -> SchedulerOutput:
    so = SchedulerOutput(step_id=1)
    for i in range(n):  # request i in runner slot i
        so.add_cached(i, num_computed_tokens=100 + i, num_scheduled_tokens=1,
                      new_token_ids=[i])
    return so


class CpuMeter:
    """CPU seconds of the workers and of this process between ``start`` and ``stop``."""

    def __init__(self, worker_pids: list[int]) -> None:
        self.workers = [psutil.Process(pid) for pid in worker_pids]
        self.me = psutil.Process()

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        t = p.cpu_times()
        return t.user + t.system

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._w0 = [self._cpu(p) for p in self.workers]
        self._d0 = self._cpu(self.me)

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._t0
        workers = [self._cpu(p) - w0 for p, w0 in zip(self.workers, self._w0, strict=True)]
        return {"worker_cpu_pct": 100 * statistics.mean(workers) / wall,
                "driver_cpu_pct": 100 * (self._cpu(self.me) - self._d0) / wall}


def summarise(samples: list[float], cpu: dict[str, float]) -> dict[str, float]:
    s = sorted(samples)
    out = {"median_us": statistics.median(s) * 1e6, "p99_us": s[int(0.99 * (len(s) - 1))] * 1e6}
    return {**out, **cpu}


async def run_phases_async(calls: dict[str, Callable[[], Awaitable[Any]]], meter: CpuMeter,
                           phases: list[Phase], idle_s: float) -> dict[str, dict[str, float]]:
    out = {}
    for name, iters, gap in phases:
        call = calls["empty" if name == "empty" else "step"]
        for _ in range(min(100, iters)):  # warm-up
            await call()
        samples = []
        meter.start()
        for _ in range(iters):
            if gap:
                await asyncio.sleep(gap)
            t0 = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - t0)
        out[name] = summarise(samples, meter.stop())
    meter.start()
    await asyncio.sleep(idle_s)
    out["idle"] = meter.stop()
    return out


def run_phases_sync(calls: dict[str, Callable[[], Any]], meter: CpuMeter, phases: list[Phase],
                    idle_s: float) -> dict[str, dict[str, float]]:
    out = {}
    for name, iters, gap in phases:
        call = calls["empty" if name == "empty" else "step"]
        for _ in range(min(100, iters)):
            call()
        samples = []
        meter.start()
        for _ in range(iters):
            if gap:
                time.sleep(gap)
            t0 = time.perf_counter()
            call()
            samples.append(time.perf_counter() - t0)
        out[name] = summarise(samples, meter.stop())
    meter.start()
    time.sleep(idle_s)
    out["idle"] = meter.stop()
    return out


# -- the systems ---------------------------------------------------------------
async def actorexec_run(transport: str, workers: int, phases: list[Phase],
                        idle_s: float) -> dict[str, dict[str, float]]:
    config = Config(model=ModelConfig(model="unused"), parallel=ParallelConfig(
        tensor_parallel_size=workers, distributed_executor_backend="mp", worker_cls=WORKER,
        transport=transport))
    so = decode_step()
    async with await Executor.create(config) as ex:
        meter = CpuMeter([ref.pid for ref in ex.refs])
        calls = {"step": lambda: ex.execute_model(so),
                 "empty": lambda: ex.collective_rpc("noop")}
        return await run_phases_async(calls, meter, phases, idle_s)


def vllm_run(workers: int, phases: list[Phase], idle_s: float,
             same_objects: bool) -> dict[str, dict[str, float]]:
    from vllm_mq_baseline import VllmQueueHarness, vllm_decode_step

    harness = VllmQueueHarness(workers)
    so = decode_step() if same_objects else vllm_decode_step()
    try:
        meter = CpuMeter(harness.pids)
        calls = {"step": lambda: harness.call("execute_model", (so,), 0),
                 "empty": lambda: harness.call("noop", (), None)}
        return run_phases_sync(calls, meter, phases, idle_s)
    finally:
        harness.close()


def _zmq_echo(endpoint: str) -> None:
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(endpoint)
    while True:
        msg = sock.recv_multipart()
        if msg[1] == b"stop":
            break
        sock.send_multipart(msg)
    sock.close(0)


def zmq_run(phases: list[Phase], idle_s: float) -> dict[str, dict[str, float]]:
    endpoint = f"ipc:///tmp/actorexec-bench-{os.getpid()}.sock"
    peer = multiprocessing.get_context("spawn").Process(target=_zmq_echo, args=(endpoint,))
    peer.start()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    step, empty = msgspec.msgpack.encode(decode_step()), b"\x00" * 16

    def echo(payload: bytes) -> None:
        sock.send(payload)
        sock.recv()

    try:
        calls = {"step": lambda: echo(step), "empty": lambda: echo(empty)}
        return run_phases_sync(calls, CpuMeter([peer.pid]), phases, idle_s)
    finally:
        sock.send(b"stop")
        peer.join(5)
        sock.close()
        if os.path.exists(endpoint[6:]):
            os.unlink(endpoint[6:])


# -- driver ----------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--gap-iters", type=int, default=300)
    parser.add_argument("--long-gap-iters", type=int, default=8)
    parser.add_argument("--idle-s", type=float, default=2.0)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--systems", default="shm,ipc,vllm,vllm-same,zmq")
    parser.add_argument("--out", default=os.path.join(  # a new file per run: results are kept
        os.path.dirname(__file__), "results",
        f"rpc_roundtrip-{time.strftime('%Y%m%d-%H%M%S')}.json"))
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from vllm_mq_baseline import vllm_available

    phases: list[Phase] = [("b2b", args.iters, 0.0), ("gap5ms", args.gap_iters, 0.005),
                           ("empty", args.iters, 0.0)]
    if args.long_gap_iters:
        phases.insert(2, ("gap1200ms", args.long_gap_iters, 1.2))
    systems = args.systems.split(",")
    vllm_version = vllm_available()
    if vllm_version is None and {"vllm", "vllm-same"} & set(systems):
        print("vLLM's MessageQueue does not import here: no vLLM baseline in this run")
        systems = [s for s in systems if not s.startswith("vllm")]
    runs: dict[str, list[dict[str, Any]]] = {}
    for rep in range(args.reps):
        for workers in map(int, args.workers.split(",")):
            for system in systems:
                if system == "zmq" and workers != 1:
                    continue
                key = f"{system}/{workers}w"
                print(f"rep {rep + 1}/{args.reps}: {key}", flush=True)
                transport = system.split("-")[0]  # shm-nopace runs over shm
                if transport in ("shm", "ipc", "tcp"):
                    with _pace_env(system), _ring_core(system):  # (uvloop when installed)
                        result = run(actorexec_run(transport, workers, phases, args.idle_s),
                                     use_uvloop=False if system.endswith("-asyncio") else None)
                elif system.startswith("vllm"):
                    result = vllm_run(workers, phases, args.idle_s, system == "vllm-same")
                else:
                    result = zmq_run(phases, args.idle_s)
                runs.setdefault(key, []).append(result)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(),
              "cpus": os.cpu_count(), "cpu_model": _cpu_model(), "python": sys.version.split()[0],
              "vllm": vllm_version, "uvloop": loop_factory() is not None, "args": vars(args),
              "ring_core": "compiled" if shm_ring_compiled.COMPILED else "python",
              "median_of_runs": _medians(runs), "runs": runs}
    print(f"ring core: {report['ring_core']}")
    print_table(report["median_of_runs"])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor()


@contextlib.contextmanager
def _pace_env(system: str) -> Iterator[None]:
    """``shm-nopace``: the workers (who inherit it) get ``ACTOREXEC_SHM_PACE=0``."""
    saved = os.environ.pop("ACTOREXEC_SHM_PACE", None)
    if system == "shm-nopace":
        os.environ["ACTOREXEC_SHM_PACE"] = "0"
    try:
        yield
    finally:
        os.environ.pop("ACTOREXEC_SHM_PACE", None)
        if saved is not None:
            os.environ["ACTOREXEC_SHM_PACE"] = saved


@contextlib.contextmanager
def _ring_core(system: str) -> Iterator[None]:
    """``shm-py``: the rings' Python implementation, here (the links built from now on) and
    in the workers (``ACTOREXEC_SHM_PURE_PYTHON=1``, inherited). A benchmark's switch:
    the runtime picks its core once, at import."""
    if system != "shm-py":
        yield
        return
    from actorexec.runtime.transport import shm_link
    from actorexec.runtime.transport.shm_ring_reader import PyRingReader
    from actorexec.runtime.transport.shm_ring_writer import PyRingWriter

    saved = shm_link.RingWriter, shm_link.RingReader
    os.environ["ACTOREXEC_SHM_PURE_PYTHON"] = "1"
    shm_link.RingWriter, shm_link.RingReader = PyRingWriter, PyRingReader
    try:
        yield
    finally:
        shm_link.RingWriter, shm_link.RingReader = saved
        os.environ.pop("ACTOREXEC_SHM_PURE_PYTHON", None)


def _medians(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key, results in runs.items():
        out[key] = {phase: {metric: statistics.median(r[phase][metric] for r in results)
                            for metric in results[0][phase]}
                    for phase in results[0]}
    return out


def print_table(medians: dict[str, dict[str, dict[str, float]]]) -> None:
    print(f"{'system':15} {'phase':10} {'median us':>10} {'p99 us':>10} {'x vllm':>7} "
          f"{'worker %':>9} {'driver %':>9}")
    for key, phases in medians.items():
        workers = key.split("/")[1]
        vllm = medians.get(f"vllm/{workers}")
        for phase, m in phases.items():
            if "median_us" not in m:
                print(f"{key:15} {phase:10} {'':>10} {'':>10} {'':>7} "
                      f"{m['worker_cpu_pct']:9.1f} {m['driver_cpu_pct']:9.1f}")
                continue
            ratio = m["median_us"] / vllm[phase]["median_us"] if vllm else float("nan")
            print(f"{key:15} {phase:10} {m['median_us']:10.1f} {m['p99_us']:10.1f} "
                  f"{ratio:7.2f} {m['worker_cpu_pct']:9.1f} {m['driver_cpu_pct']:9.1f}")


if __name__ == "__main__":
    main()
