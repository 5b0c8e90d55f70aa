"""Decode step latency of an 8B-shaped Llama through ``await executor.execute_model`` (GPU).

In one run, for batch sizes and contexts given on the command line:
  * the HBM floor: (weight bytes + KV bytes one step reads) / measured copy bandwidth;
  * a plain-torch decode of the same shapes in one CUDA graph (torch_decode_baseline.py);
  * actorexec ``uni`` and ``mp`` with CUDA graphs, and ``uni`` with ``enforce_eager=True``.
Steps are sent one after another as an engine without async scheduling sends
them: step k+1 carries the token step k sampled. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime
import gc
import io
import json
import os
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from actorexec.actors.executor import Executor
from actorexec.protocol import (
    CacheConfig,
    Config,
    DeviceConfig,
    ModelConfig,
    NewRequestData,
    ParallelConfig,
    SamplingParams,
    SchedulerConfig,
    SchedulerOutput,
)

LLAMA_8B = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256,
                hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                num_key_value_heads=8, num_hidden_layers=32, max_position_embeddings=131072,
                rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
                torch_dtype="bfloat16", bos_token_id=128000, eos_token_id=128001)
GREEDY = SamplingParams(temperature=0.0, max_tokens=1 << 20, ignore_eos=True)
BLOCK = 16


def copy_bandwidth(gib: float = 4.0) -> float:
    """Bytes/s of a large device-to-device copy (read + written bytes)."""
    n = int(gib * 2**30)
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n / statistics.median(times)


class Driver:
    """Hand-built diff steps: chunked prefill of ``batch`` prompts, then decode."""

    def __init__(self, executor: Executor, budget: int, vocab: int = 128000) -> None:
        self.executor, self.budget, self.step_id, self.vocab = executor, budget, 0, vocab
        self.next_block = 0

    def _so(self) -> SchedulerOutput:
        self.step_id += 1
        return SchedulerOutput(step_id=self.step_id)

    async def run(self, batch: int, context: int, steps: int,
                  probe: Callable[[int | None], dict] | None = None) -> tuple[list[float], dict]:
        """Step times of ``steps`` decode steps; ``probe(batch)`` runs before the requests
        finish (with their state live) and its result comes back too."""
        ids = [f"b{batch}c{context}r{i}" for i in range(batch)]
        per_req = -(-(context + steps + 8) // BLOCK)
        blocks = {r: list(range(i * per_req, (i + 1) * per_req)) for i, r in enumerate(ids)}
        prompt = {r: [(7 * i + 13 * j + 3) % self.vocab for j in range(context)]
                  for i, r in enumerate(ids)}
        last: dict[str, int] = {}
        slot = {r: i for i, r in enumerate(ids)}  # runner slots: steps name requests by them
        per_step = max(1, self.budget // context)
        for s in range(0, batch, per_step):  # chunked by whole prompts
            so = self._so()
            for r in ids[s: s + per_step]:
                so.add_new(NewRequestData(req_id=r, slot=slot[r], prompt_token_ids=prompt[r],
                                          sampling_params=GREEDY, block_ids=blocks[r]), context)
            out = await self.executor.execute_model(so)
            last.update({r: t[0] for r, t in zip(ids[s: s + per_step], out.sampled_lists(),
                                                 strict=True)})
        computed = dict.fromkeys(ids, context)
        if probe is not None:
            probe(None)
        times = []
        profiler = None
        for step in range(steps):
            if probe is not None and step == steps - 5:  # host-side ops of the last 5 steps
                profiler = torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU,
                                torch.profiler.ProfilerActivity.CUDA])
                profiler.__enter__()
            so = self._so()
            for r in ids:
                so.add_cached(slot[r], num_computed_tokens=computed[r], num_scheduled_tokens=1,
                              new_token_ids=[last[r]])
            t0 = time.perf_counter()
            out = await self.executor.execute_model(so)
            times.append(time.perf_counter() - t0)
            for r, t in zip(ids, out.sampled_lists(), strict=True):
                last[r] = t[0]
                computed[r] += 1
        table = None
        if profiler is not None:  # stopped before the probe starts a profiler of its own
            profiler.__exit__(None, None, None)
            table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
            print(table, flush=True)
        extra = probe(batch) if probe is not None else {}
        if table is not None:
            extra["host_ops"] = table
        done = self._so()
        done.finished_slots = list(slot.values())
        await self.executor.execute_model(done)
        return times, extra


def make_config(model_dir: str, backend: str, eager: bool, blocks: int, budget: int,
                max_seqs: int) -> Config:
    return Config(
        model=ModelConfig(model=model_dir, load_format="dummy", dtype="bfloat16",
                          max_model_len=4096, enforce_eager=eager),
        cache=CacheConfig(block_size=BLOCK, num_blocks_override=blocks),
        parallel=ParallelConfig(distributed_executor_backend=backend),
        scheduler=SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=max_seqs),
        device=DeviceConfig(device="cuda"))


def graph_probe(executor: Executor) -> Callable[[int | None], dict]:
    """For the uni executor: GPU time of one decode-graph replay over the live step
    state (no host work), the host time per runner phase, and the replay's top kernels.
    Step time minus replay time is what the host (runtime, inputs, sampling, reply) adds."""
    runner = executor.refs[0].actor.model_runner  # the uni executor's in-process worker

    state: dict = {}

    def probe(batch: int | None) -> dict:
        if batch is None:  # decode starts: forget the prefill steps' phases; profile Python
            runner.phase_clock.reset()
            state["profile"] = cProfile.Profile()
            state["execute"] = runner.execute_model

            def profiled(so: SchedulerOutput) -> object:
                state["profile"].enable()
                try:
                    return state["execute"](so)
                finally:
                    state["profile"].disable()

            runner.execute_model = profiled
            return {}
        runner.execute_model = state["execute"]
        text = io.StringIO()
        pstats.Stats(state["profile"], stream=text).sort_stats("tottime").print_stats(22)
        print(text.getvalue(), flush=True)
        out: dict = {"phases_us": runner.phase_clock.per_step_us(), "python": text.getvalue()}
        runner.phase_clock.reset()
        size = runner.graphs.bucket_for(batch) if runner.graphs is not None else None
        if size is None:
            return out
        times = []
        with torch.cuda.stream(runner.compute_stream):
            for _ in range(25):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                runner.graphs.replay(size)
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            with torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    runner.graphs.replay(size)
                torch.cuda.synchronize()
        out["replay_ms"] = statistics.median(times[5:])
        out["top_kernels"] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=12)
        print(f"    graph replay (bucket {size}): {out['replay_ms']:.3f} ms; host phases "
              + ", ".join(f"{k} {v:.0f}" for k, v in out["phases_us"].items()) + " us",
              flush=True)
        return out

    return probe


async def bench_actorexec(model_dir: str, backend: str, eager: bool, batches: list[int],
                          contexts: list[int], steps: int, budget: int,
                          profile: bool = False) -> dict[str, dict]:
    max_b = max(batches)
    blocks = max_b * -(-(max(contexts) + steps + 8) // BLOCK) + 16
    if profile:
        os.environ["ACTOREXEC_PHASE_TIMES"] = "1"  # read by the runner (in-process for uni)
    t0 = time.perf_counter()
    executor = await Executor.create(make_config(model_dir, backend, eager, blocks, budget, max_b))
    async with executor:
        await executor.initialize_kv_cache()
        startup = time.perf_counter() - t0
        driver, out = Driver(executor, budget), {}
        probe = graph_probe(executor) if profile and backend == "uni" else None
        for context in contexts:
            for batch in batches:
                times, extra = await driver.run(batch, context, steps, probe)
                times = times[3:]
                med = statistics.median(times)
                out[f"{batch}x{context}"] = dict(median_ms=med * 1e3,
                                                 mean_ms=statistics.mean(times) * 1e3,
                                                 tok_s=batch / med, **extra)
                print(f"  {backend}{' eager' if eager else ''} batch {batch} ctx {context}: "
                      f"{med * 1e3:.2f} ms", flush=True)
    del executor, driver  # free the in-process worker's weights and cache before the next run
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"startup_s": startup, "steps": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 256])
    ap.add_argument("--contexts", type=int, nargs="+", default=[128, 2048])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--budget", type=int, default=16384, help="prefill tokens per step")
    ap.add_argument("--runs", nargs="+", default=["uni", "mp", "uni-eager"])
    ap.add_argument("--out", default=os.path.join(  # a new file per run: results are kept
        os.path.dirname(__file__), "results", time.strftime("decode_latency-%Y%m%d-%H%M%S.json")))
    ap.add_argument("--profile", action="store_true",
                    help="uni: time graph replays alone and list the top kernels")
    args = ap.parse_args()
    from torch_decode_baseline import TorchLlama, time_graph_step

    cfg = LLAMA_8B
    bw = copy_bandwidth()
    results: dict = {"date": datetime.date.today().isoformat(),
                     "gpu": torch.cuda.get_device_name(), "copy_bandwidth_GBps": bw / 1e9,
                     "floor_ms": {}, "torch_graph_ms": {}, "actorexec": {}}
    kv_per_token = cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * 128 * 2
    for context in args.contexts:
        for batch in args.batches:
            base = TorchLlama(cfg["hidden_size"], cfg["intermediate_size"],
                              cfg["num_hidden_layers"], 32, 8, cfg["vocab_size"], batch,
                              context + 16, torch.device("cuda"))
            key = f"{batch}x{context}"
            floor_bytes = base.weight_bytes() + batch * context * kv_per_token
            results["floor_ms"][key] = floor_bytes / bw * 1e3
            results["torch_graph_ms"][key] = time_graph_step(base, batch, context)
            print(f"floor {key}: {results['floor_ms'][key]:.2f} ms; plain torch graph "
                  f"{results['torch_graph_ms'][key]:.2f} ms", flush=True)
            del base
            torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(cfg))
        for run in args.runs:
            backend, _, mode = run.partition("-")
            results["actorexec"][run] = asyncio.run(bench_actorexec(
                tmp, backend, mode == "eager", args.batches, args.contexts, args.steps,
                args.budget, args.profile))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"\n{results['gpu']}, copy bandwidth {bw / 1e12:.2f} TB/s, {results['date']}")
    head = f"{'batch x ctx':>12} {'floor':>7} {'torch graph':>12}" + "".join(
        f" {r:>16}" for r in args.runs)
    print(head + "   (ms per decode step; ratio to floor)")
    for key, floor in results["floor_ms"].items():
        base_ms = results["torch_graph_ms"][key]
        cells = [f"{base_ms:6.2f} ({base_ms / floor:4.2f}x)"]
        for run in args.runs:
            ms = results["actorexec"][run]["steps"][key]["median_ms"]
            cells.append(f"{ms:7.2f} ({ms / floor:4.2f}x)")
        print(f"{key:>12} {floor:7.2f} " + " ".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
