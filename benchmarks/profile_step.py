"""Where a decode step's time goes: one in-process ModelRunner, phases timed.

Builds the runner directly (no executor, no processes) with the same dummy
Llama as parallel_throughput.py, prefills a group, then times each phase of
decode steps with device synchronisation, and prints the torch profiler's top
operators. Diagnostic: run it when step time is far above the memory floor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from decode_driver import RequestGroup
from parallel_throughput import MODEL, write_model

from actorexec.actors.model.parallel import ParallelContext
from actorexec.actors.model_runner import ModelRunner
from actorexec.actors.model_runner import model_runner as mr
from actorexec.protocol import (
    CacheConfig,
    Config,
    DeviceConfig,
    ModelConfig,
    SchedulerConfig,
    make_kv_cache_configs,
)


def timed(phases: dict[str, list[float]], name: str, fn, sync: bool):
    """Wraps ``fn`` so each call adds its (synchronised) wall time to ``phases[name]``."""
    def wrapper(*args, **kwargs):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        if sync:
            torch.cuda.synchronize()
        phases[name].append((time.perf_counter() - t0) * 1e3)
        return out
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--reqs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--out", default=  # a new file per run: results are kept
                        f"benchmarks/results/profile_step-{time.strftime('%Y%m%d-%H%M%S')}.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = args.device == "cuda"
    if not sync:  # a smoke-sized model for the CPU
        MODEL.update(hidden_size=256, intermediate_size=512, num_attention_heads=8,
                     num_key_value_heads=4, vocab_size=1024)
    path = write_model(Path(tempfile.mkdtemp()) / "dummy", args.layers)
    group = RequestGroup("p", args.reqs, 128, 3 * args.steps + 16, 16, 0, MODEL["vocab_size"])
    dtype = "bfloat16" if sync else "float32"
    config = Config(model=ModelConfig(model=path, load_format="dummy", dtype=dtype),
                    cache=CacheConfig(num_blocks_override=group.num_blocks + 1),
                    scheduler=SchedulerConfig(max_num_batched_tokens=8192, max_num_seqs=256),
                    device=DeviceConfig(device=args.device))
    runner = ModelRunner(config, device, ParallelContext.single(args.layers))
    runner.load_model()
    (kv,) = make_kv_cache_configs([runner.get_kv_cache_spec()], [0], group.num_blocks + 1)
    runner.initialize_kv_cache(kv)
    group.absorb(runner.execute_model(group.prefill()))
    for _ in range(3):
        group.absorb(runner.execute_model(group.decode()))
    if sync:
        torch.cuda.synchronize()

    wall = []
    for _ in range(args.steps):  # plain steps: no sync inside
        t0 = time.perf_counter()
        group.absorb(runner.execute_model(group.decode()))
        wall.append((time.perf_counter() - t0) * 1e3)

    phases: dict[str, list[float]] = defaultdict(list)
    patches = {"validate_scheduler_output": mr.validate_scheduler_output}
    mr.validate_scheduler_output = timed(phases, "validate", patches["validate_scheduler_output"],
                                         sync)
    runner._apply_diff = timed(phases, "apply_diff", runner._apply_diff, sync)
    runner.buffers.prepare = timed(phases, "prepare_inputs", runner.buffers.prepare, sync)
    runner._forward = timed(phases, "forward", runner._forward, sync)
    runner._sample = timed(phases, "sample", runner._sample, sync)
    for _ in range(args.steps):
        group.absorb(runner.execute_model(group.decode()))
    mr.validate_scheduler_output = patches["validate_scheduler_output"]

    activities = [torch.profiler.ProfilerActivity.CPU]
    if sync:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(5):
            group.absorb(runner.execute_model(group.decode()))
    table_cpu = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    table_cuda = prof.key_averages().table(
        sort_by="self_cuda_time_total" if sync else "cpu_time_total", row_limit=15)
    report = {"wall_ms_median": statistics.median(wall),
              "phases_ms_median": {k: statistics.median(v) for k, v in phases.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(table_cpu)
    print(table_cuda)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
