"""``async with`` leaves no process and no socket file: on success, error and cancellation."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from actorexec.actors.executor import Executor

from .test_executor import MP, make_config


def assert_gone(pids: list[int], path: str) -> None:
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not os.path.exists(path)


@pytest.mark.parametrize("backend", MP)
@pytest.mark.parametrize("how", ["normally", "on_error", "on_cancellation"])
@pytest.mark.timeout(60)
async def test_async_with_leaves_no_process_or_socket_file(how, backend):
    seen: dict[str, object] = {}

    async def body() -> None:
        async with await Executor.create(make_config(backend, tp=2)) as ex:
            seen["pids"] = [ref.pid for ref in ex.refs]
            seen["dir"] = ex._dir.path  # the rendezvous store's (and ipc sockets') directory
            assert len(os.listdir(ex._dir.path)) == (2 if backend == "mp-ipc" else 0)
            if how == "on_error":
                raise RuntimeError("caller bug")
            if how == "on_cancellation":
                await ex.collective_rpc("slow", (30.0,))

    task = asyncio.create_task(body())
    if how == "on_cancellation":
        while "pids" not in seen:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        task.cancel()
    start = time.monotonic()
    if how == "normally":
        await task
    else:
        with pytest.raises((RuntimeError, asyncio.CancelledError)):
            await task
    assert time.monotonic() - start < 10
    assert_gone(seen["pids"], seen["dir"])


async def _wait_for_file(path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.05)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("backend", MP)
@pytest.mark.timeout(90)
async def test_cancelling_create_after_rank_0_is_ready_while_rank_1_starts_leaves_nothing(
        backend, tmp_path, monkeypatch):
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("ACTOREXEC_TEST_MARK_DIR", str(marks))
    monkeypatch.setenv("ACTOREXEC_TEST_RANK1_START_DELAY_S", "60")  # rank 1 is slow to start
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the private dir goes
    creating = asyncio.create_task(Executor.create(make_config(backend, tp=2)))
    await _wait_for_file(str(marks / "rank0.pid"), 60)
    await _wait_for_file(str(marks / "rank1.pid"), 60)
    await asyncio.sleep(0.5)  # rank 0 is serving; rank 1 is still in its start-up
    creating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await creating
    for rank in (0, 1):
        pid = int((marks / f"rank{rank}.pid").read_text())
        assert _wait_gone(pid, 5), f"rank {rank} (pid {pid}) outlived the cancelled create"
    assert not [p for p in os.listdir(tmp_path) if p.startswith("actorexec-")]


PARENT = textwrap.dedent("""
    import asyncio, os, sys
    sys.path.insert(0, {root!r})
    from actorexec.actors.executor import Executor
    from tests.actors.executor.test_executor import make_config
    async def main():
        ex = await Executor.create(make_config("mp", tp={tp}, transport={transport!r}))
        print(" ".join(str(ref.pid) for ref in ex.refs), flush=True)
        await asyncio.sleep(60)
    asyncio.run(main())
""")


@pytest.mark.parametrize("transport,tp", [("shm", 1), ("shm", 2), ("ipc", 1), ("ipc", 2),
                                          ("tcp", 1), ("tcp", 2)])
@pytest.mark.timeout(60)
def test_workers_exit_and_clean_up_when_their_parent_is_killed(transport, tp, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the parent's private dir goes here
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT.format(root=root, tp=tp, transport=transport)],
        stdout=subprocess.PIPE, text=True, env=env)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == tp
        made = [p for p in os.listdir(tmp_path) if p.startswith("actorexec-")]
        # shm or tcp with one rank needs no directory (no socket files, no rendezvous)
        assert len(made) == (0 if transport != "ipc" and tp == 1 else 1)
        parent.kill()
        parent.wait()
        for pid in workers:
            assert _wait_gone(pid, 3), f"worker {pid} outlived its parent"
        deadline = time.monotonic() + 3
        while os.listdir(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.listdir(tmp_path), "the last worker out left the private directory"
    finally:
        parent.kill()
