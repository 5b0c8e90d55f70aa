"""Decode with TP and PP, async scheduling on and off, on real GPUs (or CPU ranks with gloo).

One run, dummy weights of Llama-3.1-8B's shapes (32 layers, bf16), 128-token prompts,
batches of 1, 32 and 64 requests per in-flight slot. For each layout one executor
(async scheduling enabled in the runners), every configuration measured twice,
interleaved:
  * TP=1 (the single-GPU step) and TP=2: one batch; async off (a step is sent once
    the previous one's output arrived, carrying its token) or on (the next step is
    sent before, taking its token from the device: two steps in flight);
  * PP=2: 1, 2 or 3 disjoint batches ("groups"), async off (at most pp = 2 steps in
    flight) or on (at most pp + 1 = 3);
  * TP=2 twice: ``tp2`` forces NCCL all-reduces (ACTOREXEC_TP_ALL_REDUCE=nccl),
    ``tp2symm`` the symmetric-memory path (the default on one host: each all-reduce
    fused with the residual add and RMSNorm after it).
Reported per configuration: decode tokens/s, the median time between a batch's
consecutive outputs (its step time as a user sees it), and each rank's GPU idle
share between decode steps (CUDA events around each step on the compute stream,
``ACTOREXEC_STEP_EVENTS``). Baselines in the same run: raw 2-rank NCCL and
symmetric-memory all-reduce and batched send/recv of one step's activations
(``collective_baseline.py``). ``--profile-steps N``: then N more steps of each
layout's deepest run under the torch profiler in every worker, printed as a
per-rank kernel table (``kernel_profile.py``). Prints a table, writes JSON. Run on the device:
``bash benchmarks/device_run.sh parallel`` (nvidia-h200-x2, ~8 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import collective_baseline
from decode_driver import RequestGroup

from actorexec.actors.executor import Executor
from actorexec.actors.model_runner.step_events import idle_share
from actorexec.protocol import (
    CacheConfig,
    Config,
    DeviceConfig,
    ModelConfig,
    ParallelConfig,
    SchedulerConfig,
)

MODEL = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256,
             hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
             num_key_value_heads=8, max_position_embeddings=8192, rms_norm_eps=1e-5,
             rope_theta=500000.0, tie_word_embeddings=False, torch_dtype="bfloat16",
             bos_token_id=128000, eos_token_id=128001, hidden_act="silu")
BLOCK = 16
PREFILL_BUDGET = 2048


@dataclass(frozen=True)
class Run:
    """One measured configuration within a layout."""

    groups: int          # disjoint batches
    async_on: bool
    batch: int           # requests per group

    def in_flight(self, pp: int) -> int:
        """Steps in flight at most: a group has 2 with async on; the engine's slot count."""
        per_group = 2 if self.async_on else 1
        return min(self.groups * per_group, pp + 1 if self.async_on else pp)

    def name(self, layout: str, pp: int) -> str:
        mode = "async" if self.async_on else "sync"
        return f"{layout}_b{self.batch}_g{self.groups}_{mode}_inflight{self.in_flight(pp)}"


def write_model(directory: Path, layers: int) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({**MODEL, "num_hidden_layers": layers}))
    return str(directory)


def make_config(model_dir: str, device: str, tp: int, pp: int, blocks: int,
                max_seqs: int) -> Config:
    return Config(model=ModelConfig(model=model_dir, load_format="dummy",
                                    dtype="bfloat16" if device == "cuda" else "float32"),
                  cache=CacheConfig(block_size=BLOCK, num_blocks_override=blocks,
                                    gpu_memory_utilization=0.85),
                  parallel=ParallelConfig(tensor_parallel_size=tp, pipeline_parallel_size=pp,
                                          distributed_executor_backend="mp",
                                          allow_callable_rpc=True),
                  scheduler=SchedulerConfig(max_num_batched_tokens=PREFILL_BUDGET,
                                            max_num_seqs=max_seqs, async_scheduling=True),
                  device=DeviceConfig(device=device))


def take_step_events(worker: Any) -> list[tuple[float, float]]:
    """Runs on a worker (callable RPC): its runner's step events since the last call."""
    return worker.model_runner.step_events.take()


_names = iter(range(1 << 30))


def make_groups(run: Run, prompt_len: int, steps: int, vocab: int) -> list[RequestGroup]:
    groups, next_block = [], 0
    for k in range(run.groups):
        g = RequestGroup(f"g{next(_names)}", run.batch, prompt_len, steps + 4, BLOCK,
                         next_block, vocab, first_slot=k * run.batch)
        next_block += g.num_blocks
        groups.append(g)
    return groups


async def decode(executor: Executor, groups: list[RequestGroup], steps: int, async_on: bool,
                 slots: int) -> dict[str, float]:
    """``steps`` decode steps per group, each group a chain: its next step leaves when its
    previous output arrived (sync) or as soon as a slot is free, taking its token on the
    device (async: two of its steps in flight). At most ``slots`` steps in flight overall."""
    free = asyncio.Semaphore(slots)
    gaps: list[float] = []
    tokens = [0]

    async def chain(g: RequestGroup) -> None:
        pending: deque[asyncio.Future] = deque()
        last = time.perf_counter()

        async def collect() -> None:
            nonlocal last
            out = await pending.popleft()
            # Not `tokens[0] += g.absorb(await ...)`: that reads tokens[0] before the
            # await, so concurrent chains would lose each other's increments.
            tokens[0] += g.absorb(out)
            free.release()
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

        for _ in range(steps):
            # Collect first when at this chain's depth, or when every slot is taken (each
            # chain may hold a slot: waiting for one without collecting would deadlock).
            if len(pending) >= (2 if async_on else 1) or (pending and free.locked()):
                await collect()
            await free.acquire()
            pending.append(executor.execute_model(g.decode(on_device=async_on)))
        while pending:
            await collect()

    start = time.perf_counter()
    await asyncio.gather(*(chain(g) for g in groups))
    elapsed = time.perf_counter() - start
    return {"tokens_per_s": tokens[0] / elapsed, "median_step_ms": statistics.median(gaps) * 1e3,
            "elapsed_s": elapsed, "tokens": tokens[0]}


async def measure(executor: Executor, run: Run, pp: int, prompt_len: int, steps: int,
                  profile_steps: int = 0) -> dict[str, Any]:
    groups = make_groups(run, prompt_len, steps + profile_steps, MODEL["vocab_size"])
    for g in groups:
        for so in g.prefill_steps(PREFILL_BUDGET):
            g.absorb(await executor.execute_model(so))
    await decode(executor, groups, 2, run.async_on, run.in_flight(pp))  # settle, then measure
    await executor.collective_rpc("parallel_throughput:take_step_events")
    result = await decode(executor, groups, steps, run.async_on, run.in_flight(pp))
    events = await executor.collective_rpc("parallel_throughput:take_step_events")
    kernels = None
    if profile_steps:  # a few more steps under the profiler, apart from the timed ones
        await executor.collective_rpc("kernel_profile:start")
        await decode(executor, groups, profile_steps, run.async_on, run.in_flight(pp))
        kernels = await executor.collective_rpc("kernel_profile:stop")
    for g in groups:
        await executor.execute_model(g.finish())
    extra = {} if kernels is None else {"kernel_profile": kernels,
                                        "profile_steps": profile_steps}
    return {**extra, "groups": run.groups, "batch": run.batch, "async": run.async_on,
            "in_flight": run.in_flight(pp), **result,
            "gpu_idle_share": [idle_share(e) for e in events],
            "gpu_step_ms": [statistics.mean(b - a for a, b in e) if e else 0.0 for e in events]}


def layout_runs(pp: int, batches: list[int], symm: bool) -> list[Run]:
    if symm:
        return [Run(1, True, b) for b in batches]
    if pp == 1:
        return [Run(1, a, b) for b in batches for a in (False, True)]
    return [Run(g, a, b) for b in batches
            for g, a in ((1, False), (2, False), (1, True), (2, True), (3, True))]


async def run_layout(name: str, tp: int, pp: int, args: argparse.Namespace, model_dir: str,
                     results: dict[str, Any], out: Path) -> None:
    symm = name.endswith("symm")
    runs = layout_runs(pp, args.batches, symm)
    max_seqs = max(r.groups * r.batch for r in runs)
    blocks = max_seqs * -(-(args.prompt_len + args.steps + 16) // BLOCK) + 64
    config = make_config(model_dir, args.device, tp, pp, blocks, max_seqs)
    t0 = time.perf_counter()
    async with await Executor.create(config) as executor:
        await executor.initialize_kv_cache()
        results[f"{name}_start_s"] = time.perf_counter() - t0
        for repeat in range(args.repeats):   # interleaved: every configuration, then again
            for run in runs:
                key = run.name(name, pp) + ("" if repeat == 0 else "_again")
                results[key] = {"layout": name, "tp": tp, "pp": pp,
                                **await measure(executor, run, pp, args.prompt_len,
                                                args.steps)}
                print(f"{key}: {summary(results[key])}", flush=True)
                out.write_text(json.dumps({"runs": results}, indent=1))
        if args.profile_steps:  # the deepest async run of the largest batch, profiled
            run = runs[-1]
            key = run.name(name, pp) + "_profiled"
            results[key] = {"layout": name, "tp": tp, "pp": pp,
                            **await measure(executor, run, pp, args.prompt_len, args.steps,
                                            args.profile_steps)}
            print_kernels(key, results[key])


def print_kernels(key: str, r: dict[str, Any]) -> None:
    for rank, k in enumerate(r["kernel_profile"]):
        steps = r["profile_steps"] * max(1, r["groups"])
        print(f"{key} rank {rank}: {k['kernels'] / steps:.0f} kernels/step, busy "
              f"{k['busy_us'] / steps:.0f} us/step of span {k['span_us'] / steps:.0f}")
        for name, count, total in k["table"][:15]:
            print(f"  {total / steps:8.1f} us/step {count / steps:6.1f}x  {name}")


def summary(r: dict[str, Any]) -> str:
    idle = " ".join(f"{x:.1%}" for x in r["gpu_idle_share"])
    return (f"{r['tokens_per_s']:.0f} tok/s, step {r['median_step_ms']:.2f} ms, "
            f"GPU idle {idle}")


def ratios(results: dict[str, Any], batches: list[int]) -> dict[str, float]:
    """Targets of issue 10, per batch and repeat (where both sides ran)."""
    out: dict[str, float] = {}

    def get(key: str) -> dict[str, Any] | None:
        return results.get(key)

    for b in batches:
        for suffix in ("", "_again"):
            one = get(f"pp2_b{b}_g1_sync_inflight1{suffix}")
            full = [get(f"pp2_b{b}_g{g}_async_inflight3{suffix}") for g in (2, 3)]
            full = [r for r in full if r is not None]
            if one and full:
                out[f"pp2_b{b}_full_depth_over_one_in_flight{suffix}"] = (
                    max(r["tokens_per_s"] for r in full) / one["tokens_per_s"])
            tp1 = get(f"tp1_b{b}_g1_async_inflight2{suffix}")
            for tp2_name in ("tp2", "tp2symm"):
                tp2 = get(f"{tp2_name}_b{b}_g1_async_inflight2{suffix}")
                if tp1 and tp2:
                    out[f"{tp2_name}_over_tp1_step_b{b}{suffix}"] = (
                        tp2["median_step_ms"] / tp1["median_step_ms"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 32, 64], help="requests per in-flight slot")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32, help="decode steps per batch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--layouts", default="tp1,tp2,pp2,tp2symm")
    parser.add_argument("--layout-timeout", type=float, default=200.0,
                        help="seconds one layout (start-up included) may take")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="then profile this many steps of each layout's deepest run")
    parser.add_argument("--out", default=  # a new file per run: results are kept
                        f"results/parallel_throughput-{time.strftime('%Y%m%d-%H%M%S')}.json")
    args = parser.parse_args()
    os.environ["ACTOREXEC_STEP_EVENTS"] = "1"  # the workers inherit it
    if args.device == "cpu":  # a smoke-sized model for CPU ranks
        MODEL.update(hidden_size=256, intermediate_size=512, num_attention_heads=8,
                     num_key_value_heads=4, vocab_size=1024)
    model_dir = write_model(Path(tempfile.mkdtemp()) / "dummy-llama", args.layers)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    layouts = {"tp1": (1, 1), "tp2": (2, 1), "pp2": (1, 2), "tp2symm": (2, 1)}
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name in args.layouts.split(","):
        tp, pp = layouts[name]
        if name == "tp2symm" and args.device != "cuda":
            continue
        if tp > 1:  # each TP layout names its all-reduce, whatever the default is
            os.environ["ACTOREXEC_TP_ALL_REDUCE"] = "symm_mem" if name == "tp2symm" else "nccl"
        try:  # a layout that hangs (say, a collective that never completes) is cut off
            asyncio.run(asyncio.wait_for(run_layout(name, tp, pp, args, model_dir, results,
                                                    out), args.layout_timeout))
        except Exception as exc:  # one layout failing must not lose the others' figures
            errors[name] = "".join(traceback.format_exception(exc))
            print(f"{name} failed:\n{errors[name]}", flush=True)
        finally:
            os.environ.pop("ACTOREXEC_TP_ALL_REDUCE", None)
    shapes = [(b, MODEL["hidden_size"]) for b in args.batches]
    baseline = collective_baseline.measure(args.device, shapes)
    report = {"device": args.device, "model": {**MODEL, "num_hidden_layers": args.layers},
              "workload": {k: v for k, v in vars(args).items() if k != "out"},
              "runs": results, "ratios": ratios(results, args.batches),
              "collective_baseline_us": baseline, "errors": errors}
    out.write_text(json.dumps(report, indent=2))
    print_table(report)


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{'run':<40}{'tok/s':>10}{'step ms':>9}{'GPU step ms':>13}  GPU idle per rank")
    for name, r in report["runs"].items():
        if not isinstance(r, dict):
            continue
        gpu = " ".join(f"{x:.2f}" for x in r["gpu_step_ms"])
        idle = " ".join(f"{x:.1%}" for x in r["gpu_idle_share"])
        print(f"{name:<40}{r['tokens_per_s']:>10.0f}{r['median_step_ms']:>9.2f}{gpu:>13}  {idle}")
    for k, v in report["ratios"].items():
        print(f"{k}: {v:.3f}")
    for shape, row in report["collective_baseline_us"].items():
        cells = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in row.items())
        print(f"raw 2-rank [{shape}]: {cells}")
    for name, error in report["errors"].items():
        print(f"{name}: FAILED ({error.strip().splitlines()[-1]})")


if __name__ == "__main__":
    main()
