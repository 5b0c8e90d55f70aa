"""AsyncEngine on the real executor and model runner (tiny random Llama, CPU, uni backend).

Greedy decoding is a pure function of the token sequence, so a request must
get the same tokens whether it runs alone or batched, chunked or preempted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from actorexec.actors.engine import AsyncEngine, FinishReason, RequestOutput, ensure_default_model
from actorexec.protocol import (
    CacheConfig,
    Config,
    InvalidRequestError,
    ModelConfig,
    ParallelConfig,
    RestartConfig,
    SamplingParams,
    SchedulerConfig,
)
from tests.checkpoints import make_tiny_checkpoint

MAX_POS = 256   # the tiny checkpoint's max_position_embeddings


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"), "llama")


def config(model: Path, num_blocks: int | None = None, block_size: int = 4, backend: str = "uni",
           pp: int = 1, **sched: object) -> Config:
    return Config(model=ModelConfig(model=str(model)),
                  cache=CacheConfig(block_size=block_size, num_blocks_override=num_blocks,
                                    cpu_kv_cache_bytes=8 * 1024 * 1024),
                  parallel=ParallelConfig(distributed_executor_backend=backend,
                                          pipeline_parallel_size=pp),
                  scheduler=SchedulerConfig(**{"max_num_batched_tokens": 32, **sched}))


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


def prompt(i: int, n: int) -> list[int]:
    return [3 + (i * 31 + j * 7) % 120 for j in range(n)]


async def collect(engine: AsyncEngine, ids: list[int], params: SamplingParams,
                  request_id: str | None = None) -> list[RequestOutput]:
    return [out async for out in engine.generate(ids, params, request_id=request_id)]


async def tokens(engine: AsyncEngine, ids: list[int], params: SamplingParams) -> list[int]:
    outs = await collect(engine, ids, params)
    assert outs[-1].finished and sum(len(o.new_token_ids) for o in outs) == len(outs[-1].token_ids)
    return outs[-1].token_ids


JOBS = [(prompt(i, n), greedy(m)) for i, (n, m) in enumerate(
    [(3, 12), (40, 5), (9, 20), (1, 8), (70, 6), (17, 15), (5, 1), (28, 10)])]


async def test_concurrent_mixed_requests_get_the_tokens_each_gets_alone(tiny_llama):
    async with await AsyncEngine.create(config(tiny_llama, max_num_seqs=5)) as engine:
        alone = [await tokens(engine, ids, p) for ids, p in JOBS]
        together = await asyncio.gather(*(tokens(engine, ids, p) for ids, p in JOBS))
        assert together == alone
        assert [len(t) for t in alone] == [p.max_tokens for _, p in JOBS]
        assert engine.num_free_blocks == engine.kv_cache_config.num_blocks


async def test_block_exhaustion_preempts_and_preempted_requests_still_finish_correctly(
        tiny_llama):
    jobs = [(prompt(i, 6), greedy(14)) for i in range(3)]    # 20 tokens = 5 blocks each
    async with await AsyncEngine.create(config(tiny_llama, num_blocks=8)) as engine:
        alone = [await tokens(engine, ids, p) for ids, p in jobs]
        assert engine.scheduler.num_preemptions == 0
        together = await asyncio.gather(*(tokens(engine, ids, p) for ids, p in jobs))
        assert engine.scheduler.num_preemptions > 0
        assert together == alone
        assert engine.num_free_blocks == 8


async def test_abort_ends_the_stream_and_frees_its_blocks(tiny_llama):
    async with await AsyncEngine.create(config(tiny_llama)) as engine:
        total = engine.kv_cache_config.num_blocks
        seen: list[RequestOutput] = []
        async for out in engine.generate(prompt(0, 30), greedy(200), request_id="long"):
            seen.append(out)
            if len(seen) == 3:
                assert engine.num_free_blocks < total
                await engine.abort("long")
        assert seen[-1].finished and seen[-1].finish_reason is FinishReason.ABORT
        assert 4 <= len(seen) < 10 and engine.num_free_blocks == total
        # The engine keeps serving, and the id can be reused.
        assert len(await tokens(engine, prompt(0, 30), greedy(3))) == 3


async def test_leaving_a_stream_early_aborts_its_request(tiny_llama):
    async with await AsyncEngine.create(config(tiny_llama)) as engine:
        total = engine.kv_cache_config.num_blocks
        async with contextlib.aclosing(engine.generate(prompt(5, 20), greedy(100))) as stream:
            async for _ in stream:
                break
        assert engine.num_free_blocks == total and not engine.scheduler.has_work()
        assert len(await tokens(engine, prompt(5, 20), greedy(4))) == 4


async def test_an_over_long_request_is_rejected_while_others_continue(tiny_llama):
    async with await AsyncEngine.create(config(tiny_llama)) as engine:
        alone = await tokens(engine, prompt(1, 10), greedy(8))
        good = asyncio.create_task(tokens(engine, prompt(1, 10), greedy(8)))
        with pytest.raises(InvalidRequestError, match=f"maximum model length {MAX_POS}"):
            await collect(engine, prompt(2, MAX_POS + 1), greedy(4))
        with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
            await collect(engine, [5, 100000], greedy(4))
        assert await good == alone


@pytest.mark.slow
async def test_pipeline_parallel_engine_keeps_two_batches_in_flight_with_the_same_tokens(
        tiny_llama):
    async with await AsyncEngine.create(config(tiny_llama, max_num_seqs=4)) as engine:
        alone = [await tokens(engine, ids, p) for ids, p in JOBS[:4]]
    async with await AsyncEngine.create(config(tiny_llama, backend="mp", pp=2,
                                               max_num_seqs=4)) as engine:
        assert engine.executor.max_concurrent_batches == 2
        together = await asyncio.gather(*(tokens(engine, ids, p) for ids, p in JOBS[:4]))
        assert engine.peak_in_flight == 2
    assert together == alone


async def test_default_model_streams_text_through_its_tokenizer(tmp_path):
    model = ensure_default_model(tmp_path / "default")
    async with await AsyncEngine.create(config(model)) as engine:
        outs = await collect(engine, "This program is", greedy(12))
    assert "".join(o.text for o in outs) == engine.tokenizer.decode(outs[-1].token_ids)
    assert len(outs[-1].token_ids) == 12


async def test_generation_stops_at_max_model_len(tiny_llama):
    cfg = config(tiny_llama)
    cfg = cfg.replace(model=ModelConfig(model=str(tiny_llama), max_model_len=24))
    async with await AsyncEngine.create(cfg) as engine:
        outs = await collect(engine, prompt(3, 20), greedy(50))
        assert len(outs[-1].token_ids) == 4 and outs[-1].finish_reason is FinishReason.LENGTH


async def test_with_restarts_off_an_executor_failure_ends_every_stream_with_an_error(
        tiny_llama):
    cfg = config(tiny_llama, backend="mp").replace(restart=RestartConfig(enabled=False))
    async with await AsyncEngine.create(cfg) as engine:
        started = asyncio.Event()

        async def consume(i: int) -> None:
            async for _ in engine.generate(prompt(i, 5), greedy(MAX_POS - 10)):
                started.set()
                await asyncio.sleep(0.01)     # keep the requests alive long enough

        tasks = [asyncio.create_task(consume(i)) for i in range(3)]
        await asyncio.wait_for(started.wait(), 30)
        os.kill(engine.executor.refs[0].pid, signal.SIGKILL)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        assert all(isinstance(r, Exception) for r in results), results
        assert engine.is_failed
        with pytest.raises(Exception, match=r"died|failed"):
            await collect(engine, prompt(0, 3), greedy(2))


async def test_logprobs_come_with_each_new_token_when_asked(tiny_llama):
    params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True, logprobs=2)
    async with await AsyncEngine.create(config(tiny_llama)) as engine:
        outs = await collect(engine, prompt(4, 7), params)
        plain = await collect(engine, prompt(4, 7), greedy(5))
    assert outs[-1].token_ids == plain[-1].token_ids and not plain[-1].logprobs
    for out in outs:
        assert [lp.token_ids[0] for lp in out.logprobs] == out.new_token_ids
        assert all(len(lp.token_ids) == 3 and lp.sampled_rank == 1 for lp in out.logprobs)


async def test_a_stop_string_ends_the_text_before_it_and_frees_the_blocks_at_once(tmp_path):
    model = ensure_default_model(tmp_path / "default")
    async with await AsyncEngine.create(config(model)) as engine:
        reference = "".join(o.text for o in await collect(engine, "This program", greedy(40)))
        stop = reference[10:13]
        outs = [o async for o in engine.generate("This program", greedy(40), stop=[stop])]
        assert "".join(o.text for o in outs) == reference[:reference.index(stop)]
        assert outs[-1].finished and outs[-1].finish_reason is FinishReason.STOP
        assert len(outs[-1].token_ids) < 40          # it did not run on to max_tokens
        assert engine.num_free_blocks == engine.kv_cache_config.num_blocks
        assert not engine.scheduler.has_work()


async def test_an_empty_prompt_is_rejected_as_the_docs_say(tmp_path):
    model = ensure_default_model(tmp_path / "default")
    async with await AsyncEngine.create(config(model)) as engine:
        with pytest.raises(InvalidRequestError, match="empty"):
            engine.add_request("", greedy(4))
        with pytest.raises(InvalidRequestError, match="empty"):
            await collect(engine, "", greedy(4))
        with pytest.raises(InvalidRequestError, match="empty"):
            await collect(engine, [], greedy(4))


async def test_add_request_validates_at_once_and_closing_its_stream_aborts(tiny_llama):
    async with await AsyncEngine.create(config(tiny_llama)) as engine:
        total = engine.kv_cache_config.num_blocks
        with pytest.raises(InvalidRequestError, match="maximum model length"):
            engine.add_request(prompt(0, MAX_POS + 1), greedy(4))
        assert not engine.scheduler.has_work()         # nothing was queued
        async with engine.add_request(prompt(0, 20), greedy(200)) as stream:
            first = await anext(stream)
            assert not first.finished and engine.num_free_blocks < total
        assert engine.num_free_blocks == total and not engine.scheduler.has_work()


async def test_a_model_directory_with_tokenizer_json_streams_its_text(tmp_path):
    from tests.actors.engine.tokenizer_files import byte_level_bpe

    model = make_tiny_checkpoint(tmp_path / "m", "llama", vocab_size=320)
    byte_level_bpe(model)
    async with await AsyncEngine.create(config(model)) as engine:
        outs = await collect(engine, "héllo wörld ✓", greedy(30))
        assert engine.tokenizer is not None
        text = "".join(o.text for o in outs)
        assert text == engine.tokenizer.decode(outs[-1].token_ids) and text


UNGUARDED = """
import asyncio
from actorexec.actors.engine import AsyncEngine
from actorexec.protocol import Config, ModelConfig, ParallelConfig

async def main():
    config = Config(model=ModelConfig(model={model!r}),
                    parallel=ParallelConfig(distributed_executor_backend="mp"))
    async with await AsyncEngine.create(config):
        pass
{tail}
"""


@pytest.mark.parametrize("tail, message", [
    # No guard at all: caught before any process starts.
    ("asyncio.run(main())",
     'put the code that starts the engine under `if __name__ == "__main__":`'),
    # A guard, but the engine also starts at the top level: caught in the worker.
    ('if __name__ == "__main__":\n    pass\nasyncio.run(main())',
     "an engine was started while a worker process was starting"),
])
def test_an_unguarded_mp_script_fails_with_one_clear_line(tmp_path, tiny_llama, tail, message):
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED.format(model=str(tiny_llama), tail=tail))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert result.stderr.count(message) == 1
