"""Pipeline- and tensor-parallel decode on real GPUs (or CPU ranks with gloo).

Measures, in one run and with dummy weights of a Llama-architecture model:
  * decode throughput with PP=2 at max_concurrent_batches 1 (one batch in
    flight: stages take turns) vs 2 (two disjoint batches in flight: both
    stages busy) -- the ratio is the pipelining gain;
  * median decode step time of TP=2 vs TP=1.
Prints a table and writes JSON. Run on the device: see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import collective_baseline
from decode_driver import RequestGroup

from actorexec.actors.executor import Executor
from actorexec.protocol import (
    CacheConfig,
    Config,
    DeviceConfig,
    ModelConfig,
    ParallelConfig,
    SchedulerConfig,
)

# Llama-3-8B shapes with fewer layers: a bf16 decode step is milliseconds on an H200.
MODEL = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=32000,
             hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
             num_key_value_heads=8, max_position_embeddings=4096, rms_norm_eps=1e-5,
             rope_theta=500000.0, tie_word_embeddings=False, torch_dtype="bfloat16",
             bos_token_id=1, eos_token_id=2, hidden_act="silu")


def write_model(directory: Path, layers: int) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({**MODEL, "num_hidden_layers": layers}))
    return str(directory)


def make_config(model_dir: str, device: str, tp: int, pp: int, blocks: int,
                max_tokens: int, trace_dir: str | None = None) -> Config:
    return Config(profile_dir=trace_dir, model=ModelConfig(model=model_dir, load_format="dummy",
                                    dtype="bfloat16" if device == "cuda" else "float32"),
                  cache=CacheConfig(block_size=16, num_blocks_override=blocks,
                                    gpu_memory_utilization=0.85),
                  parallel=ParallelConfig(tensor_parallel_size=tp, pipeline_parallel_size=pp,
                                          distributed_executor_backend="mp"),
                  scheduler=SchedulerConfig(max_num_batched_tokens=max_tokens, max_num_seqs=256),
                  device=DeviceConfig(device=device))


async def run_groups(executor: Executor, groups: list[RequestGroup], steps: int,
                     in_flight: int, prefill: bool = True) -> dict[str, float]:
    """Prefill every group, then ``steps`` decode steps per group, ``in_flight`` at once.

    As an engine does: groups are split into ``in_flight`` chains; each chain
    sends its next step as soon as its previous output returns, so the
    pipeline never drains (a batch is never in two steps at once). Returns
    decode tokens/s and the median latency of one step.
    """
    for g in groups if prefill else ():
        g.absorb(await executor.execute_model(g.prefill()))
    step_times: list[float] = []
    tokens = [0]

    async def chain(chain_groups: list[RequestGroup]) -> None:
        for _ in range(steps):
            for g in chain_groups:
                t0 = time.perf_counter()
                out = await executor.execute_model(g.decode())
                # Not `tokens[0] += g.absorb(await ...)`: that reads tokens[0] before the
                # await, so concurrent chains would lose each other's increments.
                tokens[0] += g.absorb(out)
                step_times.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(chain(groups[i::in_flight]) for i in range(in_flight)))
    elapsed = time.perf_counter() - start
    return {"tokens_per_s": tokens[0] / elapsed,
            "median_step_ms": statistics.median(step_times) * 1e3,
            "elapsed_s": elapsed, "tokens": tokens[0]}


async def measure(model_dir: str, device: str, tp: int, pp: int, in_flight: int, reqs: int,
                  prompt_len: int, steps: int, trace_dir: str | None = None) -> dict[str, float]:
    vocab = MODEL["vocab_size"]
    groups: list[RequestGroup] = []
    next_block = 0
    for name, n, plen, new in (("g0", reqs, prompt_len, steps + 8), ("g1", reqs, prompt_len,
                                                                      steps + 8),
                               ("warm", 4, 16, 8)):
        groups.append(RequestGroup(name, n, plen, new, 16, next_block, vocab))
        next_block += groups[-1].num_blocks  # groups own disjoint blocks
    warm = groups.pop()
    # a whole group's prefill is one step
    config = make_config(model_dir, device, tp, pp, next_block, max(2048, reqs * prompt_len),
                         trace_dir)
    async with await Executor.create(config) as executor:
        await executor.initialize_kv_cache()
        await run_groups(executor, [warm], 4, 1)
        await executor.get_step_timeline()  # drop warm-up records
        result = await run_groups(executor, groups, steps, in_flight)
        timelines = await executor.get_step_timeline()
        if trace_dir:  # a few more steps under the torch profiler, one trace per rank
            await executor.start_profile()
            await run_groups(executor, groups, 4, in_flight, prefill=False)
            await executor.stop_profile()
    return {"tp": tp, "pp": pp, "in_flight": in_flight, **result,
            **stage_summary(timelines, tp),
            "timeline": [[(t.step_id, t.start, t.end) for t in r] for r in timelines[::tp]]}


def stage_summary(timelines: list, tp: int) -> dict[str, list[float]]:
    """Per pipeline stage (its TP rank 0): mean ms a decode step keeps the rank busy,
    and utilisation (busy time over the span of those steps). Means, not medians:
    alternating short and long steps would hide behind a median."""
    busy, util = [], []
    for rank_steps in timelines[::tp]:
        decode = rank_steps[len(rank_steps) // 4:]  # skip the prefills at the start
        total = sum(t.end - t.start for t in decode)
        busy.append(total / len(decode) * 1e3)
        util.append(total / (decode[-1].end - decode[0].start))
    return {"stage_busy_ms": busy, "stage_utilisation": util}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--reqs", type=int, default=32, help="requests per batch (group)")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--out", default=  # a new file per run: results are kept
                        f"benchmarks/results/parallel_throughput-{time.strftime('%Y%m%d-%H%M%S')}.json")
    parser.add_argument("--only", default=None, help="run only configurations with this prefix")
    parser.add_argument("--trace-dir", default=None,
                        help="write torch-profiler traces of the PP=2, 2-in-flight run here")
    args = parser.parse_args()
    if args.device == "cpu":  # a smoke-sized model for CPU ranks
        MODEL.update(hidden_size=256, intermediate_size=512, num_attention_heads=8,
                     num_key_value_heads=4, vocab_size=1024)
    model_dir = write_model(Path(tempfile.mkdtemp()) / "dummy-llama", args.layers)
    common = dict(reqs=args.reqs, prompt_len=args.prompt_len, steps=args.steps)
    runs = [("pp2_inflight1", 1, 2, 1), ("pp2_inflight2", 1, 2, 2),
            ("tp1", 1, 1, 1), ("tp2", 2, 1, 1)]
    # Each configuration twice, interleaved: the spread between the two is the noise.
    runs = [(f"{name}{suffix}", *rest) for suffix in ("", "_again") for name, *rest in runs]
    runs = [r for r in runs if args.only is None or r[0].startswith(args.only)]
    results = {}
    for name, tp, pp, in_flight in runs:
        trace = args.trace_dir if name == "pp2_inflight2" else None
        results[name] = asyncio.run(measure(model_dir, args.device, tp, pp, in_flight,
                                            trace_dir=trace, **common))
        print(f"{name}: { {k: v for k, v in results[name].items() if k != 'timeline'} }",
              flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"runs": results}, indent=1))
    # Baseline in the same run: what the interconnect alone costs per collective.
    baseline = collective_baseline.measure(args.device, (args.reqs, MODEL["hidden_size"]))
    print(f"baseline: {baseline}", flush=True)
    ratios = {}
    for suffix in ("", "_again") if args.only is None else ():
        r = {k.removesuffix(suffix): v for k, v in results.items() if k.endswith(suffix)}
        ratios[f"pp2_throughput_inflight2_over_inflight1{suffix}"] = (
            r["pp2_inflight2"]["tokens_per_s"] / r["pp2_inflight1"]["tokens_per_s"])
        ratios[f"tp2_step_time_over_tp1{suffix}"] = (
            r["tp2"]["median_step_ms"] / r["tp1"]["median_step_ms"])
    report = {"device": args.device, "model": {**MODEL, "num_hidden_layers": args.layers},
              "workload": common, "runs": results, "ratios": ratios,
              "collective_baseline_us": baseline}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\n{'run':<16}{'tok/s':>12}{'step ms':>10}  per stage: mean busy ms / utilisation")
    for name, r in results.items():
        stages = " ".join(f"{b:.1f}/{u:.0%}"
                          for b, u in zip(r["stage_busy_ms"], r["stage_utilisation"],
                                          strict=True))
        print(f"{name:<16}{r['tokens_per_s']:>12.1f}{r['median_step_ms']:>10.2f}  {stages}")
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}")
    for k, v in baseline.items():
        print(f"raw 2-rank {k} of [{args.reqs}, {MODEL['hidden_size']}]: {v:.1f}")


if __name__ == "__main__":
    main()
