"""Drives an Executor directly with hand-built SchedulerOutputs: for people writing an engine.

One request, prompt of 5 tokens: a prefill step, then decode steps. Each
decode step sends the token sampled by the previous step (the runner never
appends its own samples) and, when the sequence crosses a block boundary, the
new block id. The last step drops the request from the runner.

    python examples/direct_executor.py [--model DIR] [--backend uni|mp]
"""

from __future__ import annotations

import argparse
import asyncio

from actorexec.actors.engine import ensure_default_model
from actorexec.actors.executor import Executor
from actorexec.protocol import (
    CacheConfig,
    Config,
    ModelConfig,
    NewRequestData,
    ParallelConfig,
    SamplingParams,
    SchedulerOutput,
)


async def main(model: str, backend: str, steps: int) -> None:
    config = Config(model=ModelConfig(model=model),
                    cache=CacheConfig(block_size=4, num_blocks_override=16),
                    parallel=ParallelConfig(distributed_executor_backend=backend))
    async with await Executor.create(config) as executor:
        kv = await executor.initialize_kv_cache()
        print(f"KV cache: {kv.num_blocks} blocks of {kv.block_size} tokens")
        prompt = [1, 87, 107, 104, 35, 83]           # BOS + "The P" as byte tokens (+3)
        blocks = [0, 1]                              # 8 slots: enough for 6 tokens + 2 more

        # Step 0, prefill: the request in full; all 6 prompt tokens run.
        step = SchedulerOutput(step_id=0)
        greedy = SamplingParams(temperature=0.0, max_tokens=steps)
        # Slot 0 names r0 in every later step, until a step drops it.
        step.add_new(NewRequestData(req_id="r0", slot=0, prompt_token_ids=prompt,
                                    block_ids=blocks, sampling_params=greedy),
                     num_scheduled_tokens=len(prompt))
        out = await executor.execute_model(step)
        tokens = out.sampled_lists()[0]
        print(f"step 0 (prefill {len(prompt)} tokens) -> {tokens}")

        # Decode steps: one token each, sending back the token sampled last step.
        for step_id in range(1, steps):
            num_computed = len(prompt) + len(tokens) - 1
            new_blocks = [len(blocks)] if num_computed == len(blocks) * kv.block_size else []
            blocks += new_blocks
            step = SchedulerOutput(step_id=step_id)
            step.add_cached(0, num_computed_tokens=num_computed, num_scheduled_tokens=1,
                            new_token_ids=tokens[-1:], new_block_ids=new_blocks)
            out = await executor.execute_model(step)
            tokens += out.sampled_lists()[0]
            print(f"step {step_id} (decode, blocks {blocks}) -> {out.sampled_lists()[0]}")

        # Tell the runner to forget r0 (an empty step that only frees its slot).
        await executor.execute_model(SchedulerOutput(step_id=steps, finished_slots=[0]))
        text = bytes(t - 3 for t in tokens if 3 <= t < 259).decode("utf-8", "replace")
        print(f"generated token ids {tokens} = {text!r}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="hand-built SchedulerOutputs to an Executor")
    ap.add_argument("--model", help="HF model dir (default: the built-in default model)")
    ap.add_argument("--backend", choices=["uni", "mp"], default="uni")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    asyncio.run(main(args.model or str(ensure_default_model()), args.backend, args.steps))
