"""``uni`` and ``mp`` executors return the same shapes and raise the same classes."""

from __future__ import annotations

import asyncio

import pytest

from actorexec.actors.executor import Executor
from actorexec.protocol import MethodNotAllowedError

from .test_executor import MP, make_config, step


async def shapes_and_errors(backend: str) -> dict[str, object]:
    seen: dict[str, object] = {}
    async with await Executor.create(make_config(backend)) as ex:
        every = ex.collective_rpc("echo", (1,))
        one = ex.collective_rpc("echo", (2,), unique_reply_rank=0)
        futs = ex.collective_rpc("echo", (3,), non_block=True)
        seen["every"] = (type(every), await every)
        seen["one"] = (type(one), await one)
        seen["non_block"] = ([type(f) for f in futs], [await f for f in futs])
        for name, make in {
            "raised": lambda: ex.collective_rpc("fail", ("x",)),
            "bad step": lambda: ex.execute_model(step(-1)),
            "deadline": lambda: ex.collective_rpc("slow", (1.0,), timeout=0.2),
            "not allowed": lambda: ex.collective_rpc("_runner"),
            "bad arguments": lambda: ex.collective_rpc("echo", (1, 2)),
            "both shapes": lambda: ex.collective_rpc("echo", (1,), unique_reply_rank=0,
                                                     non_block=True),
        }.items():
            try:
                await make()
            except Exception as exc:
                seen[name] = type(exc)
        await asyncio.sleep(1.0)  # let the slow call finish before shutdown
    return seen


@pytest.mark.parametrize("backend", MP)
@pytest.mark.timeout(90)
async def test_uni_and_mp_return_the_same_types_and_raise_the_same_classes(backend):
    uni, mp = await shapes_and_errors("uni"), await shapes_and_errors(backend)
    assert uni == mp
    assert uni["every"] == (asyncio.Future, [1]) and uni["one"] == (asyncio.Future, 2)
    [future_type], values = uni["non_block"]  # one per rank, of the same class on both
    assert issubclass(future_type, asyncio.Future) and values == [3]
    assert issubclass(uni["raised"], ValueError) and uni["not allowed"] is MethodNotAllowedError
    assert issubclass(uni["deadline"], TimeoutError) and uni["bad arguments"] is TypeError
    assert uni["both shapes"] is ValueError
