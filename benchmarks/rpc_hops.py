"""Where one ``execute_model`` round trip's time goes, hop by hop (diagnostic).

Wraps (never replaces) the runtime's own functions in the caller and in the
worker process with timestamp probes (``time.perf_counter_ns``: CLOCK_MONOTONIC,
one clock for every process on the host), runs 256-request decode steps to
``--workers`` mp workers (the test EchoWorker: the real Worker, no model), and
prints the median of each hop over ``--iters`` calls. The probes cost well
under a microsecond each. Hops, in order:

caller: encode, submit, send -> worker: its loop has the message (transit +
wake-up + read), envelope decode, argument decode, hand-off to the work
thread, the step, the way to the reply sink, reply encode -> caller: its loop
has the reply (transit + wake-up + read), reply decode, the awaiting coroutine
resuming.

Usage: python benchmarks/rpc_hops.py [--transport ipc|shm] [--workers 1] [--iters 2000]
       [--gap-ms 0] [--uvloop] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from actorexec.actors.executor import Executor
from actorexec.protocol import Config, ModelConfig, ParallelConfig
from actorexec.runtime import expose, run
from tests.actors.executor.workers import EchoRunner, EchoWorker

now = time.perf_counter_ns
# call id -> probe name -> ns; one table per process.
MARKS: dict[int, dict[str, int]] = defaultdict(dict)
_CURRENT: list[int] = [0]  # the call id the caller is sending now (one call at a time)


def probe(owner: Any, name: str, before: str | None, after: str | None,
          call_id: Callable[..., int | None]) -> None:
    """Wraps ``owner.name`` so that it stamps ``before``/``after`` for the call it handles."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cid = call_id(*args, **kwargs)
        if before and cid is not None:
            MARKS[cid][before] = now()
        try:
            return original(*args, **kwargs)
        finally:
            if after and cid is not None:
                MARKS[cid][after] = now()

    setattr(owner, name, wrapper)


def _current(*_: Any, **__: Any) -> int:
    return _CURRENT[0]


def _call_arg(index: int) -> Callable[..., int | None]:
    def get(*args: Any, **_: Any) -> int | None:
        call = args[index]
        return getattr(call, "call_id", None)
    return get


class TimedRunner(EchoRunner):
    def execute_model(self, scheduler_output: Any) -> Any:
        MARKS[_CURRENT[0]]["w.run0"] = now()
        try:
            return super().execute_model(scheduler_output)
        finally:
            MARKS[_CURRENT[0]]["w.run1"] = now()


class HopWorker(EchoWorker):
    """EchoWorker with probes installed in its own process (``on_start`` runs there)."""

    async def on_start(self) -> None:
        await super().on_start()
        install_worker_probes()

    def load_model(self) -> None:
        super().load_model()
        self.model_runner = TimedRunner(self)

    @expose
    def noop(self) -> None:
        """The empty message's handler, stamped as the step is (a loop method)."""
        MARKS[_CURRENT[0]]["w.run0"] = MARKS[_CURRENT[0]]["w.run1"] = now()

    @expose
    def hop_marks(self) -> dict[int, dict[str, int]]:
        return dict(MARKS)


def install_worker_probes() -> None:
    from actorexec.protocol import codec
    from actorexec.runtime import mailbox

    def arrived(*_: Any, **__: Any) -> int:
        return -1  # the call is not decoded yet: kept aside until _start knows its id

    def remember(*args: Any, **kwargs: Any) -> int | None:
        # _start_on_thread(pending, ...), _run_on_loop(call, ...), take_on_thread(call, ...)
        call = getattr(args[1], "call", args[1])
        _CURRENT[0] = call.call_id  # the work thread reads it while this call runs
        MARKS[call.call_id].update(MARKS.pop(-1, {}))
        return call.call_id

    server = _server_module()
    probe(server, "_dispatch", "w.recv", None, arrived)  # the loop has it
    from actorexec.runtime.shm_server import ShmActorServer

    probe(ShmActorServer, "_take", "w.recv", None, arrived)  # the work thread has it
    probe(mailbox.Mailbox, "_run_on_loop", "w.take", "w.started", remember)
    probe(mailbox.Mailbox, "_start_on_thread", "w.take", "w.started", remember)
    probe(mailbox.Mailbox, "take_on_thread", "w.take", "w.started", remember)
    probe(server, "_reply", "w.reply0", "w.reply1", _call_arg(2))
    probe(codec.PayloadEncoder, "encode", None, "w.encoded", _current)


def _server_module() -> Any:
    from actorexec.runtime.server import ActorServer

    return ActorServer


def install_caller_probes() -> None:
    from actorexec.runtime import process, refs

    encoder = refs._ENCODER
    original = encoder.encode

    def encode(value: Any) -> Any:
        MARKS[_CURRENT[0]]["c.enc0"] = now()
        try:
            return original(value)
        finally:
            MARKS[_CURRENT[0]]["c.enc1"] = now()

    encoder.encode = encode  # type: ignore[method-assign]
    on_message = process.ProcessRef._on_message

    def on_message_probed(self: Any, *args: Any) -> Any:
        marks = MARKS[_CURRENT[0]]
        marks[f"c.recv{self.rank}"] = now()
        try:
            return on_message(self, *args)
        finally:
            marks[f"c.resolved{self.rank}"] = now()

    process.ProcessRef._on_message = on_message_probed  # type: ignore[method-assign]


HOPS = [  # (label, from probe, to probe)
    ("caller: encode", "c.enc0", "c.enc1"),
    ("caller: submit", "c.enc1", "c.send0"),
    ("caller: send call returns", "c.send0", "c.send1"),
    ("-> worker has the message (loop or thread)", "c.send0", "w.recv"),
    ("worker: envelope decode, take", "w.recv", "w.take"),
    ("worker: argument decode, start", "w.take", "w.started"),
    ("worker: hand-off to the work thread", "w.started", "w.run0"),
    ("worker: the step (EchoRunner)", "w.run0", "w.run1"),
    ("worker: step done -> reply sink", "w.run1", "w.reply0"),
    ("worker: reply encode", "w.reply0", "w.encoded"),
    ("<- caller's loop has the reply", "w.encoded", "c.recv0"),
    ("caller: reply decode, future set", "c.recv0", "c.resolved0"),
    ("caller: other ranks' replies", "c.resolved0", "c.resolved"),
    ("caller: awaiting coroutine resumes", "c.resolved", "c.end"),
]


async def measure(transport: str, workers: int, iters: int, gap_s: float,
                  method: str = "execute_model") -> dict[str, Any]:
    from benchmarks.rpc_roundtrip import decode_step

    install_caller_probes()
    config = Config(model=ModelConfig(model="unused"), parallel=ParallelConfig(
        tensor_parallel_size=workers, distributed_executor_backend="mp",
        worker_cls="benchmarks.rpc_hops:HopWorker", transport=transport))
    so = decode_step()
    totals: list[int] = []
    async with await Executor.create(config) as ex:
        channel = getattr(ex, "_channel", None)  # shm: one write for every rank
        probe(channel or ex.refs[0].transport, "send", "c.send0", "c.send1", _current)
        ids: list[int] = []
        for i in range(iters + iters // 10):
            if gap_s:
                await asyncio.sleep(gap_s)
            cid = i + 1_000_000
            _CURRENT[0] = cid
            t0 = now()
            MARKS[cid]["c.begin"] = t0
            fut = ex.execute_model(so) if method == "execute_model" else (
                ex.collective_rpc("noop"))
            MARKS[cid]["c.sent"] = now()
            await fut
            MARKS[cid]["c.end"] = now()
            ids.append(cid)
        # Caller and worker call ids differ; map by order (one call at a time).
        worker_marks = await ex.collective_rpc("hop_marks")
    calls = ids[iters // 10:]
    per_hop: dict[str, list[float]] = defaultdict(list)
    for rank, wm in enumerate(worker_marks):
        steps = sorted((int(k), v) for k, v in wm.items() if "w.run0" in v)
        steps = steps[-len(ids):]
        for cid, (_, marks) in zip(ids, steps, strict=True):
            if cid in calls and rank == 0:
                MARKS[cid].update(marks)
    for cid in calls:
        m = MARKS[cid]
        m["c.resolved"] = max(v for k, v in m.items() if k.startswith("c.resolved"))
        totals.append(m["c.end"] - m["c.begin"])
        for label, a, b in HOPS:
            if a in m and b in m:
                per_hop[label].append((m[b] - m[a]) / 1e3)
    return {"total_us": statistics.median(totals) / 1e3,
            "hops_us": {label: statistics.median(v) for label, v in per_hop.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transport", default="ipc")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--gap-ms", type=float, default=0.0)
    parser.add_argument("--method", choices=("execute_model", "noop"), default="execute_model",
                        help="noop: the empty message (a loop method, no payload)")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--out", default=os.path.join(  # a new file per run: results are kept
        os.path.dirname(__file__), "results", f"rpc_hops-{time.strftime('%Y%m%d-%H%M%S')}.json"))
    args = parser.parse_args()
    result = run(measure(args.transport, args.workers, args.iters, args.gap_ms / 1e3,
                         args.method),
                 use_uvloop=args.uvloop)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), **result}, f, indent=2)
    print(f"{args.method}: transport={args.transport} workers={args.workers} gap={args.gap_ms} ms "
          f"uvloop={args.uvloop}: median round trip {result['total_us']:.1f} us (rank 0 hops)")
    total = 0.0
    for label, us in result["hops_us"].items():
        total += us
        print(f"  {label:44} {us:8.1f}")
    print(f"  {'sum of hop medians':44} {total:8.1f}")


if __name__ == "__main__":
    main()
