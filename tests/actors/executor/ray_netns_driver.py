"""The driver of test_ray_netns.py, run inside the first network namespace.

Joins the Ray cluster whose nodes live in the two namespaces, waits for both
nodes, runs the engine with PP=2 (STRICT_SPREAD: one stage per namespace) and
prints one JSON line: the tokens and where each rank ran.

    python -m tests.actors.executor.ray_netns_driver MODEL_DIR RAY_ADDRESS
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import msgspec
import ray

from tests.actors.executor.test_ray_models import engine_tokens, with_strategy
from tests.actors.test_executor_runs_models import model_config


async def main(model: str, address: str) -> None:
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    deadline = time.monotonic() + 120
    while sum(n["Alive"] for n in ray.nodes()) < 2:
        if time.monotonic() > deadline:
            raise SystemExit("the second Ray node never joined")
        await asyncio.sleep(0.2)
    config = with_strategy(model_config(model, "ray", 1, 2), "STRICT_SPREAD")
    config = config.replace(parallel=msgspec.structs.replace(config.parallel,
                                                             ray_address=address))
    placements: list[list[object]] = []
    tokens = await engine_tokens(config, lambda ex: placements.extend(
        [p.rank, p.stage, p.node_ip, p.transport] for p in ex.placements))
    print(json.dumps({"tokens": tokens, "placements": placements}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
