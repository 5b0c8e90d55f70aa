"""Tensor parallelism under torchrun: every process runs its own engine (external launcher).

torchrun starts the ranks and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT; each process builds the same engine with
``distributed_executor_backend="external_launcher"``, adds the same requests
and schedules them the same way, so all ranks take identical steps. Every
rank gets the same tokens; rank 0 prints them (``--all-ranks``: every rank).

    torchrun --nproc-per-node 2 examples/torchrun_tp2.py [--model DIR]
        [--prompts '[[1, 5, 9], [1, 7]]'] [--max-tokens 8] [--tp 2] [--pp 1]

Output: one JSON line per request, ``{"rank": 0, "request": "0", "tokens": [...]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from actorexec.actors.engine import AsyncEngine, ensure_default_model
from actorexec.protocol import (
    CacheConfig,
    Config,
    ModelConfig,
    ParallelConfig,
    SamplingParams,
    SchedulerConfig,
)


async def main(args: argparse.Namespace) -> None:
    config = Config(model=ModelConfig(model=args.model or str(ensure_default_model())),
                    cache=CacheConfig(block_size=4, num_blocks_override=64),
                    scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64),
                    parallel=ParallelConfig(tensor_parallel_size=args.tp,
                                            pipeline_parallel_size=args.pp,
                                            distributed_executor_backend="external_launcher"))
    rank = int(os.environ.get("RANK", "0"))
    greedy = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    async with await AsyncEngine.create(config, tokenizer=None) as engine:
        # Same requests, same order, on every rank: the schedules cannot differ.
        streams = [engine.add_request(prompt, greedy, request_id=str(i))
                   for i, prompt in enumerate(json.loads(args.prompts))]
        for stream in streams:
            async with stream:
                outs = [out async for out in stream]
            if rank == 0 or args.all_ranks:
                # One write per line: the ranks share stdout (torchrun runs them unbuffered).
                sys.stdout.write(json.dumps({"rank": rank, "request": stream.request_id,
                                             "tokens": outs[-1].token_ids}) + "\n")
                sys.stdout.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF-format model directory (default: the built-in one)")
    parser.add_argument("--prompts", default="[[1, 87, 107, 104, 35, 83], [1, 40, 41]]",
                        help="JSON list of token-id prompts")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--all-ranks", action="store_true", help="every rank prints its tokens")
    asyncio.run(main(parser.parse_args()))
