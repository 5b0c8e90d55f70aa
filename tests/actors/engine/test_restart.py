"""Issue 13 with real worker processes: a worker is SIGKILLed (or hangs) mid-stream, the
engine restarts its executor, and every stream goes on with exactly the tokens of an
undisturbed run; the failed executor leaves nothing; past the budget every stream fails
as before; a request whose own input kills the worker fails alone."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from actorexec.actors.engine import AsyncEngine, RequestOutput
from actorexec.protocol import (
    ActorClosedError,
    ActorDiedError,
    CacheConfig,
    Config,
    ModelConfig,
    ParallelConfig,
    RequestFailedError,
    RestartConfig,
    SamplingParams,
    SchedulerConfig,
)
from tests.actors.engine.restart_workers import POISON_TOKEN
from tests.checkpoints import make_tiny_checkpoint

pytestmark = pytest.mark.slow

NUM_STREAMS, MAX_TOKENS = 16, 40
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
PROMPTS = [[3 + (i * 31 + j * 7) % 120 for j in range(4 + (i * 5) % 23)]
           for i in range(NUM_STREAMS)]
# Seeded sampling draws from a hash of (seed, position, token id): a recomputed request
# draws what it would have drawn (docs/engine.md, "Restarts").
SEEDED = [SamplingParams(temperature=0.8, top_p=0.95, seed=100 + i, max_tokens=MAX_TOKENS,
                         ignore_eos=True) for i in range(4)]
ALL_PARAMS = [GREEDY] * NUM_STREAMS + SEEDED
ALL_PROMPTS = PROMPTS + PROMPTS[:len(SEEDED)]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where executors make their private directories here: empty again once they are gone."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def engine_config(model: Path, backend: str = "mp", tp: int = 1, pp: int = 1,
                  worker_cls: str | None = None, step_timeout_s: float | None = None,
                  **restart: object) -> Config:
    parallel = dict(distributed_executor_backend=backend, tensor_parallel_size=tp,
                    pipeline_parallel_size=pp, step_timeout_s=step_timeout_s)
    if worker_cls is not None:
        parallel["worker_cls"] = worker_cls
    return Config(model=ModelConfig(model=str(model)),
                  cache=CacheConfig(block_size=4, cpu_kv_cache_bytes=8 << 20),
                  parallel=ParallelConfig(**parallel),
                  scheduler=SchedulerConfig(max_num_batched_tokens=256),
                  restart=RestartConfig(**{"backoff_s": 0.0, **restart}))


class Streams:
    """Concurrent streams ``s0, s1, ...`` on one engine. Each output must extend what its
    stream has seen by exactly its new tokens (no duplicate, no gap); every token's arrival
    is recorded with how many restarts the engine had finished by then."""

    def __init__(self, engine: AsyncEngine, prompts: list[list[int]],
                 params: SamplingParams | list[SamplingParams] = GREEDY) -> None:
        self.engine = engine
        self.tokens: list[list[int]] = [[] for _ in prompts]
        self.arrivals: list[tuple[float, int]] = []
        each = params if isinstance(params, list) else [params] * len(prompts)
        self.tasks = [asyncio.create_task(self._consume(i, p, each[i]))
                      for i, p in enumerate(prompts)]

    async def _consume(self, i: int, prompt: list[int], params: SamplingParams) -> list[int]:
        last: RequestOutput | None = None
        async for last in self.engine.generate(prompt, params, request_id=f"s{i}"):
            assert last.token_ids == self.tokens[i] + last.new_token_ids, i
            self.tokens[i] += last.new_token_ids
            self.arrivals.append((time.monotonic(), len(self.engine.restarts)))
        assert last is not None and last.finished
        return self.tokens[i]

    async def wait_for(self, condition: object, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():  # type: ignore[operator]
            assert time.monotonic() < deadline, "timed out"
            assert not any(t.done() and t.exception() for t in self.tasks), \
                [t.exception() for t in self.tasks if t.done()]
            await asyncio.sleep(0.005)

    async def results(self) -> list[list[int] | BaseException]:
        return await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 120)


def gone(pid: int) -> bool:
    """The process has exited and been reaped (or is a zombie about to be)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def kill_mid_stream(streams: Streams, rank: int) -> float:
    """SIGKILLs ``rank``; returns the seconds from the kill to the first token after the
    recovery, having checked that the failed executor left no process or file."""
    engine = streams.engine
    done = len(engine.restarts)
    pids = [ref.pid for ref in engine.executor.refs]
    private_dir = engine.executor._dir.path
    killed_at = time.monotonic()
    os.kill(pids[rank], signal.SIGKILL)
    await streams.wait_for(lambda: any(n > done for _, n in streams.arrivals))
    first = min(t for t, n in streams.arrivals if n > done)
    assert all(gone(pid) for pid in pids) and not os.path.exists(private_dir)
    record = engine.restarts[done]
    assert (record.rank, record.pid, record.signal) == (rank, pids[rank], "SIGKILL")
    return first - killed_at


@pytest.fixture(scope="module")
def undisturbed(tiny_llama: Path) -> list[list[int]]:
    """The greedy then the seeded streams' tokens with no failure (one rank, in-process:
    greedy tokens are the same on every layout, tests/actors/parallel checks that)."""
    async def run() -> list[list[int]]:
        async with await AsyncEngine.create(engine_config(tiny_llama, "uni")) as engine:
            return await Streams(engine, ALL_PROMPTS, ALL_PARAMS).results()  # type: ignore
    return asyncio.run(run())


@pytest.mark.timeout(120)
async def test_tp2_streams_survive_a_rank_killed_twice_in_a_row_with_every_token_exact(
        tiny_llama, undisturbed, private_tmp):
    async with await AsyncEngine.create(engine_config(tiny_llama, tp=2)) as engine:
        streams = Streams(engine, PROMPTS)
        await streams.wait_for(lambda: min(map(len, streams.tokens)) >= 5)
        fds = open_fds()
        first = await kill_mid_stream(streams, rank=1)
        # Again at once: the fresh executor dies before most requests got a token back.
        second = await kill_mid_stream(streams, rank=0)
        assert await streams.results() == undisturbed[:NUM_STREAMS]
        assert len(engine.restarts) == 2 and not engine.is_failed
        assert open_fds() == fds          # the failed executors' sockets and pipes are closed
        pids = [ref.pid for ref in engine.executor.refs]
    print(f"\nTP=2, 16 streams: kill -> first token after recovery {first:.2f} s, then "
          f"{second:.2f} s (recovered in {engine.restarts[0].recovered_s:.2f} s, "
          f"{engine.restarts[1].recovered_s:.2f} s)")
    assert all(gone(pid) for pid in pids) and list(private_tmp.iterdir()) == []


@pytest.mark.timeout(120)
async def test_pp2_greedy_and_seeded_streams_survive_a_killed_stage_with_every_token_exact(
        tiny_llama, undisturbed, private_tmp):
    async with await AsyncEngine.create(engine_config(tiny_llama, pp=2)) as engine:
        streams = Streams(engine, ALL_PROMPTS, ALL_PARAMS)
        await streams.wait_for(lambda: min(map(len, streams.tokens)) >= 5)
        restarting = asyncio.Event()
        late = asyncio.create_task(added_while_restarting(engine, restarting))
        first = await kill_mid_stream(streams, rank=1)     # the last stage: it samples
        assert await streams.results() == undisturbed
        assert restarting.is_set() and await late == undisturbed[0]
        assert engine.peak_in_flight == 2
        pids = [ref.pid for ref in engine.executor.refs]
    print(f"\nPP=2, 16 streams: kill -> first token after recovery {first:.2f} s "
          f"(recovered in {engine.restarts[0].recovered_s:.2f} s)")
    assert all(gone(pid) for pid in pids) and list(private_tmp.iterdir()) == []


async def added_while_restarting(engine: AsyncEngine, restarting: asyncio.Event) -> list[int]:
    """Adds a request while the executor is being replaced: it queues and runs after."""
    while not engine.is_restarting:
        await asyncio.sleep(0.001)
    restarting.set()
    outs = [out async for out in engine.generate(PROMPTS[0], GREEDY, request_id="late")]
    return outs[-1].token_ids


@pytest.mark.timeout(120)
async def test_more_kills_than_max_restarts_end_every_stream_with_the_typed_error(
        tiny_llama, private_tmp):
    config = engine_config(tiny_llama, tp=2, max_restarts=1, backoff_s=0.2)
    async with await AsyncEngine.create(config) as engine:
        streams = Streams(engine, PROMPTS)
        await streams.wait_for(lambda: min(map(len, streams.tokens)) >= 3)
        await kill_mid_stream(streams, rank=1)
        assert engine.restarts[0].backoff_s == 0.2
        pid = engine.executor.refs[0].pid
        os.kill(pid, signal.SIGKILL)                       # the budget is spent
        results = await streams.results()
        assert all(isinstance(r, ActorDiedError) and f"(pid {pid}) died" in str(r)
                   for r in results), results
        assert engine.is_failed and not engine.is_restarting and len(engine.restarts) == 1
        with pytest.raises(ActorDiedError):
            engine.add_request(PROMPTS[0], GREEDY)
    assert list(private_tmp.iterdir()) == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["uni", "mp"])
async def test_a_step_stuck_past_the_watchdog_restarts_the_executor_and_streams_go_on(
        tiny_llama, backend, monkeypatch):
    # The echo worker's step 13 hangs for 3 s (ranks inherit the environment); its tokens
    # are step ids, so the streams are checked for gaps and duplicates, not for values.
    monkeypatch.setenv("ACTOREXEC_TEST_STEP_SLEEP_S", "3")
    config = engine_config(tiny_llama, backend, step_timeout_s=0.5,
                           worker_cls="tests.actors.executor.workers:EchoWorker")
    async with await AsyncEngine.create(config) as engine:
        streams = Streams(engine, PROMPTS[:4], SamplingParams(max_tokens=20, ignore_eos=True))
        results = await streams.results()
        assert [len(r) for r in results] == [20] * 4       # type: ignore[arg-type]
        [record] = engine.restarts
        assert "step 13" in record.cause and "step_timeout_s=0.5" in record.cause
        assert record.num_resumed == 4 and not engine.is_failed


@pytest.mark.timeout(120)
async def test_a_request_that_kills_its_worker_each_time_fails_alone_and_the_rest_finish(
        tiny_llama):
    config = engine_config(tiny_llama, worker_cls="tests.actors.engine.restart_workers:"
                           "PoisonWorker")
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [POISON_TOKEN, 5, 6]]
    async with await AsyncEngine.create(config) as engine:
        streams = Streams(engine, prompts, SamplingParams(max_tokens=10, ignore_eos=True))
        results = await streams.results()
        assert isinstance(results[3], RequestFailedError), results
        assert [len(r) for r in results[:3]] == [10] * 3   # type: ignore[arg-type]
        # Three failures: the first two with everyone in flight (all suspects then), the
        # third with the poisoned request the only suspect running.
        assert [r.blamed for r in engine.restarts] == [(), (), ("s3",)]
        assert not engine.is_failed


@pytest.mark.timeout(60)
async def test_shutting_down_during_a_restart_leaves_no_process_or_file(
        tiny_llama, private_tmp, tmp_path_factory, monkeypatch):
    marks = tmp_path_factory.mktemp("marks")
    monkeypatch.setenv("ACTOREXEC_TEST_MARK_DIR", str(marks))       # each worker's pid
    monkeypatch.setenv("ACTOREXEC_TEST_RANK0_START_DELAY_S", "1.0")  # starting takes 1 s
    config = engine_config(tiny_llama, worker_cls="tests.actors.executor.workers:EchoWorker")
    async with await AsyncEngine.create(config) as engine:
        stream = engine.add_request(PROMPTS[0], SamplingParams(max_tokens=200, ignore_eos=True))
        await anext(stream)
        failed = engine.executor.refs[0].pid
        os.kill(failed, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (marks / "rank0.pid").read_text() == str(failed):   # the fresh one is starting
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        fresh = int((marks / "rank0.pid").read_text())
        assert engine.is_restarting and not engine.is_failed
        await engine.shutdown()
        with pytest.raises(ActorClosedError):
            await anext(stream)
    assert gone(failed) and gone(fresh) and list(private_tmp.iterdir()) == []
