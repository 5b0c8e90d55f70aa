"""Real workers (model loaded, gloo process group) leave nothing behind and listen on
nothing but the configured interface: no /dev/shm semaphores after SIGKILL, no socket
on all interfaces, no private directory or rendezvous file after the parent's SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from actorexec.actors.executor import Executor
from tests.actors.test_executor_runs_models import model_config
from tests.proc_fds import socket_inodes

pytestmark = pytest.mark.slow


def shm_semaphore_inodes(pid: int) -> set[int]:
    """Inodes of the /dev/shm/sem.* files ``pid`` has mapped. glibc maps a semaphore under
    a temporary name that it then renames, so the map shows "(deleted)": the inode is
    what ties it to the entry that stays (``sem.mp-*`` for multiprocessing's locks)."""
    with open(f"/proc/{pid}/maps") as f:
        rows = [line.split(maxsplit=5) for line in f]
    return {int(row[4]) for row in rows if len(row) == 6 and "/dev/shm/sem." in row[5]}


def dev_shm_semaphore_inodes() -> set[int]:
    inodes = set()
    for name in os.listdir("/dev/shm"):
        if name.startswith("sem."):
            try:
                inodes.add(os.stat(os.path.join("/dev/shm", name)).st_ino)
            except FileNotFoundError:  # another process's, just removed
                pass
    return inodes


def listening_addresses(pid: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of the TCP sockets ``pid`` listens on."""
    inodes = socket_inodes(pid)
    found = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    found.append(fields[1].partition(":")[0])
    return found


@pytest.mark.timeout(240)
async def test_two_gloo_ranks_listen_only_on_the_configured_interface(checkpoints):
    config = model_config(str(checkpoints["llama"]), "mp", tp=2)
    async with await Executor.create(config) as ex:  # process group up, model loaded
        listening = {ref.rank: listening_addresses(ref.pid) for ref in ex.refs}
    assert all(listening.values()), f"gloo's pair sockets should be visible: {listening}"
    for rank, addresses in listening.items():
        wildcard = [a for a in addresses if set(a) == {"0"}]  # 0.0.0.0 or ::
        assert not wildcard, f"rank {rank} listens on all interfaces: {addresses}"
        assert all(a in ("0100007F", "00000000000000000000000001000000") for a in addresses), \
            f"rank {rank} listens off loopback: {addresses}"


@pytest.mark.timeout(240)
async def test_sigkilled_workers_leave_no_semaphore_in_dev_shm(checkpoints):
    config = model_config(str(checkpoints["llama"]), "mp", tp=2)
    async with await Executor.create(config) as ex:  # the loader ran on every rank
        mapped = set().union(*(shm_semaphore_inodes(ref.pid) for ref in ex.refs))
        for ref in ex.refs:
            os.kill(ref.pid, signal.SIGKILL)
        await asyncio.gather(*(asyncio.wait_for(ref.exited.wait(), 5) for ref in ex.refs))
        left = mapped & dev_shm_semaphore_inodes()  # checked before the parent exits
    assert not left, f"SIGKILLed workers left {len(left)} semaphore(s) in /dev/shm"


def exited(pid: int) -> bool:
    """True once ``pid`` is gone or a zombie (its reaper, now init, may take a while)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


PARENT = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from actorexec.actors.executor import Executor
    from tests.actors.test_executor_runs_models import model_config
    async def main():
        ex = await Executor.create(model_config({path!r}, "mp", tp=2))
        print(" ".join(str(ref.pid) for ref in ex.refs), ex._dir.path, flush=True)
        await asyncio.sleep(120)
    asyncio.run(main())
""")


@pytest.mark.timeout(240)
def test_a_sigkilled_parent_leaves_no_directory_socket_or_rendezvous_file(checkpoints, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    code = PARENT.format(root=root, path=str(checkpoints["llama"]))
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        *pids, private = parent.stdout.readline().split()
        # the rendezvous store (over the default shared-memory transport, no socket files)
        assert os.listdir(private) == ["rendezvous.store"]
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while os.path.exists(private) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(private), os.listdir(private)
        for pid in map(int, pids):  # the last one out may still be tearing down
            while not exited(pid) and time.monotonic() < deadline + 3:
                time.sleep(0.05)
            assert exited(pid), f"worker {pid} outlived its parent"
    finally:
        parent.kill()
