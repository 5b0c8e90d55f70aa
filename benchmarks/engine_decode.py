"""Decode through the reference engine, as a user sees it: inter-token latency and tok/s.

``decode_latency.py`` sends hand-built steps one after another, so the host
time between two steps is always exposed. Here ``AsyncEngine`` drives the
executor; with async scheduling (the default) it sends step k+1 before step
k's tokens are back and the runner feeds them on the device, so that host
time hides behind the GPU. Runs each batch size with async scheduling on and
off in one process; 8B-shaped Llama with dummy weights on CUDA (a tiny model
with ``--tiny`` on the CPU). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from decode_latency import LLAMA_8B

from actorexec.actors.engine import AsyncEngine
from actorexec.protocol import (
    CacheConfig,
    Config,
    DeviceConfig,
    ModelConfig,
    ParallelConfig,
    SamplingParams,
    SchedulerConfig,
)


async def run_batch(engine: AsyncEngine, batch: int, context: int, tokens: int,
                    vocab: int) -> dict[str, float]:
    """``batch`` concurrent greedy streams; per-token arrival times after the first 8 tokens."""
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    arrivals: list[list[float]] = [[] for _ in range(batch)]

    async def one(i: int) -> None:
        prompt = [(7 * i + 13 * j + 3) % vocab for j in range(context)]
        async for out in engine.generate(prompt, params):
            arrivals[i].extend([time.perf_counter()] * len(out.new_token_ids))

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(batch)))
    steady = [a[8:] for a in arrivals]
    gaps = [b - a for times in steady for a, b in itertools.pairwise(times)]
    first = min(t[0] for t in steady)
    last = max(t[-1] for t in steady)
    return {"itl_ms": statistics.median(gaps) * 1e3,
            "tok_s": sum(len(t) - 1 for t in steady) / (last - first),
            "wall_s": time.perf_counter() - start}


async def bench(model_dir: str, device: str, async_on: bool, batches: list[int], context: int,
                tokens: int, backend: str) -> dict[str, dict[str, float]]:
    max_b = max(batches)
    config = Config(
        model=ModelConfig(model=model_dir, load_format="dummy",
                          dtype="bfloat16" if device == "cuda" else "float32",
                          max_model_len=context + tokens + 16),
        cache=CacheConfig(block_size=16, num_blocks_override=max_b * -(
            -(context + tokens + 16) // 16) + 16),
        parallel=ParallelConfig(distributed_executor_backend=backend),
        scheduler=SchedulerConfig(max_num_seqs=max_b, max_num_batched_tokens=max(
            2048, max_b * 2), async_scheduling=async_on),
        device=DeviceConfig(device=device))
    out = {}
    async with await AsyncEngine.create(config, tokenizer=None) as engine:
        vocab = engine.vocab_size
        for batch in batches:
            out[str(batch)] = await run_batch(engine, batch, context, tokens, vocab)
            print(f"  async={async_on} batch {batch}: itl {out[str(batch)]['itl_ms']:.2f} ms, "
                  f"{out[str(batch)]['tok_s']:.0f} tok/s", flush=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--backend", default="uni")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU")
    ap.add_argument("--out", default=os.path.join(  # a new file per run: results are kept
        os.path.dirname(__file__), "results", time.strftime("engine_decode-%Y%m%d-%H%M%S.json")))
    args = ap.parse_args()
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    cfg = dict(LLAMA_8B)
    if args.tiny:
        cfg.update(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                   num_key_value_heads=2, num_hidden_layers=2, vocab_size=256)
    results: dict = {"date": datetime.date.today().isoformat(), "device": device,
                     "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
                     "context": args.context, "tokens": args.tokens, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(cfg))
        for async_on in (True, False):
            key = "async" if async_on else "sync"
            results["runs"][key] = asyncio.run(bench(tmp, device, async_on, args.batches,
                                                     args.context, args.tokens, args.backend))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"\n{results['gpu'] or 'CPU'}, {args.backend}, context {args.context}")
    print(f"{'batch':>6} {'sync itl ms':>12} {'async itl ms':>13} {'sync tok/s':>11} "
          f"{'async tok/s':>12}")
    for b in args.batches:
        s, a = results["runs"]["sync"][str(b)], results["runs"]["async"][str(b)]
        print(f"{b:>6} {s['itl_ms']:>12.2f} {a['itl_ms']:>13.2f} {s['tok_s']:>11.0f} "
              f"{a['tok_s']:>12.0f}")


if __name__ == "__main__":
    main()
