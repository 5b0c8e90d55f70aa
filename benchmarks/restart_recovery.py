"""How long streams pause when a worker is SIGKILLed mid-stream, and what it leaves (issue 13).

An 8B-shaped Llama (dummy weights, bf16) on one GPU with ``--device cuda``,
or a small one on the CPU; the ``mp`` backend. In one engine: the streams
run once undisturbed, then again (same prompts) with the worker SIGKILLed
once every stream has some tokens. Reported: the engine's start-up time
(the baseline: a restart is a start-up plus a recompute), kill -> first
token after recovery, the engine's own recovery time, whether every stream
got the undisturbed tokens, KV blocks before and after, and on CUDA the GPU
memory in use before the kill, lowest during the restart (the dead worker's
memory released?) and after. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from actorexec.actors.engine import AsyncEngine
from actorexec.protocol import (
    CacheConfig,
    Config,
    DeviceConfig,
    ModelConfig,
    ParallelConfig,
    RestartConfig,
    SamplingParams,
    SchedulerConfig,
)

LLAMA_8B = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256,
                hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                num_key_value_heads=8, num_hidden_layers=32, max_position_embeddings=8192,
                rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
                torch_dtype="bfloat16", bos_token_id=128000, eos_token_id=128001)
SMALL = {**LLAMA_8B, "vocab_size": 2048, "hidden_size": 256, "intermediate_size": 512,
         "num_attention_heads": 8, "num_key_value_heads": 4, "num_hidden_layers": 4,
         "torch_dtype": "float32"}


class GpuMemory:
    """Samples the GPU's used memory (nvidia-smi, MiB) every 0.1 s on a thread; the parent
    never touches CUDA, so the figures are the workers'."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,"
                                  "noheader,nounits", "--id=0"], capture_output=True, text=True)
            if out.returncode == 0:
                self.samples.append((time.monotonic(), int(out.stdout.split()[0])))

    def between(self, start: float, end: float) -> list[int]:
        return [mib for t, mib in self.samples if start <= t <= end]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


async def stream_all(engine: AsyncEngine, prompts: list[list[int]], params: SamplingParams,
                     tag: str, arrivals: list[tuple[float, int]]) -> list[list[int]]:
    async def one(i: int) -> list[int]:
        tokens: list[int] = []
        async for out in engine.generate(prompts[i], params, request_id=f"{tag}{i}"):
            assert out.token_ids == tokens + out.new_token_ids   # no gap, no repeat
            tokens += out.new_token_ids
            arrivals.append((time.monotonic(), len(engine.restarts)))
        return tokens
    return await asyncio.gather(*(one(i) for i in range(len(prompts))))


async def measure(config: Config, streams: int, prompt_len: int, max_tokens: int,
                  kill_after: int, device: str) -> dict:
    rng = random.Random(0)
    vocab = 1000
    prompts = [[rng.randrange(10, vocab) for _ in range(prompt_len)] for _ in range(streams)]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    memory = GpuMemory() if device == "cuda" else None
    t0 = time.monotonic()
    async with await AsyncEngine.create(config) as engine:
        started_s = time.monotonic() - t0
        blocks_before = engine.kv_cache_config.num_blocks
        undisturbed = await stream_all(engine, prompts, params, "a", [])
        arrivals: list[tuple[float, int]] = []
        run = asyncio.ensure_future(stream_all(engine, prompts, params, "b", arrivals))
        while len(arrivals) < streams * kill_after:
            await asyncio.sleep(0.005)
        pid = engine.executor.refs[0].pid
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        disturbed = await run
        first = min(t for t, n in arrivals if n > 0)
        [record] = engine.restarts
        blocks_after = engine.kv_cache_config.num_blocks
        settled = time.monotonic()
    result = {
        "engine_start_s": started_s, "kill_to_first_token_s": first - killed_at,
        "recovered_s": record.recovered_s, "cause": record.cause,
        "streams": streams, "prompt_len": prompt_len, "max_tokens": max_tokens,
        "identical_streams": sum(a == b for a, b in zip(undisturbed, disturbed, strict=True)),
        "kv_blocks_before": blocks_before, "kv_blocks_after": blocks_after}
    if memory is not None:
        memory.stop()
        before = memory.between(killed_at - 1.0, killed_at)
        during = memory.between(killed_at, first)
        result.update(gpu_mib_before_kill=max(before, default=None),
                      gpu_mib_lowest_during_restart=min(during, default=None),
                      gpu_mib_after=memory.between(first, settled)[-1:] or None)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--kill-after", type=int, default=32, help="tokens per stream first")
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs (faster start-up)")
    ap.add_argument("--out", default="benchmarks/results/restart_recovery.json")
    args = ap.parse_args()
    shape = LLAMA_8B if args.device == "cuda" else SMALL
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(shape))
        config = Config(
            model=ModelConfig(model=tmp, load_format="dummy", enforce_eager=args.eager),
            cache=CacheConfig(gpu_memory_utilization=0.85, cpu_kv_cache_bytes=64 << 20),
            parallel=ParallelConfig(distributed_executor_backend="mp"),
            scheduler=SchedulerConfig(max_num_batched_tokens=4096),
            device=DeviceConfig(device=args.device), restart=RestartConfig(backoff_s=0.0))
        result = asyncio.run(measure(config, args.streams, args.prompt_len, args.max_tokens,
                                     args.kill_after, args.device))
    result["date"] = datetime.date.today().isoformat()
    result["device"] = args.device
    result["model"] = "llama-8b-shaped, dummy, bf16" if args.device == "cuda" else "small"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    width = max(map(len, result))
    for key, value in result.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"{key:>{width}}  {shown}")


if __name__ == "__main__":
    main()
