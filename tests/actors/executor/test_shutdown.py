"""``async with`` leaves no process and no socket file: on success, error and cancellation."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from actorexec.actors.executor import Executor

from .test_executor import make_config


def assert_gone(pids: list[int], path: str) -> None:
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not os.path.exists(path)


@pytest.mark.parametrize("how", ["normally", "on_error", "on_cancellation"])
@pytest.mark.timeout(60)
async def test_async_with_leaves_no_process_or_socket_file(how):
    seen: dict[str, object] = {}

    async def body() -> None:
        async with await Executor.create(make_config("mp", tp=2)) as ex:
            seen["pids"] = [ref.pid for ref in ex.refs]
            seen["dir"] = ex._dir.path
            assert len(os.listdir(ex._dir.path)) == 2
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


PARENT = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from actorexec.actors.executor import Executor
    from tests.actors.executor.test_executor import make_config
    async def main():
        ex = await Executor.create(make_config("mp"))
        print(ex.refs[0].pid, ex._dir.path, flush=True)
        await asyncio.sleep(60)
    asyncio.run(main())
""")


@pytest.mark.timeout(60)
def test_workers_exit_when_their_parent_is_killed():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(root=root)],
                              stdout=subprocess.PIPE, text=True)
    leftover = ""
    try:
        pid_text, leftover = parent.stdout.readline().split()
        child = int(pid_text)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        pytest.fail(f"worker {child} outlived its parent")
    finally:
        parent.kill()
        # A SIGKILLed parent cannot clean up; its private endpoint dir is the test's to remove.
        shutil.rmtree(leftover, ignore_errors=True)
