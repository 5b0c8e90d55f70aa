"""A real local Ray cluster of two nodes for a test module, and the checks that an executor
left nothing on it (Ray start-up takes seconds on 2 cores: one cluster per module)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'actorexec[ray]'")
from ray.cluster_utils import Cluster  # noqa: E402

from tests.proc_fds import fd_targets, socket_inodes  # noqa: E402

ROOT = str(Path(__file__).resolve().parents[3])
NODE_CPUS = 2  # logical CPUs per node: a TP=2 x PP=2 layout packs one stage per node


def start_cluster() -> Iterator[Cluster]:
    """Head + one worker node on this machine; the driver (this process) joins it.

    Ray's worker processes inherit the environment of the nodes' raylets, so the
    repo root goes on PYTHONPATH first (test worker classes live in ``tests``)."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, saved) if p)
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": NODE_CPUS, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=NODE_CPUS)
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def alive_hosts() -> list[str]:
    """Actor ids of RayWorkerHost actors Ray still counts as alive (or about to be)."""
    from ray._private.state import actors

    return [actor_id for actor_id, info in actors().items()
            if info.get("ActorClassName", "").endswith("RayWorkerHost")
            and info.get("State") not in ("DEAD", 4)]


def live_placement_groups() -> list[str]:
    return [pg_id for pg_id, info in ray.util.placement_group_table().items()
            if info["state"] != "REMOVED"]


def pids_alive(pids: Sequence[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        try:  # a zombie (dead, not yet reaped by its raylet) is gone for our purposes
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        alive.append(pid)
    return alive


async def wait_nothing_left(pids: Sequence[int], timeout_s: float = 15.0) -> None:
    """Every host process gone, no RayWorkerHost actor alive, no placement group left."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not (pids_alive(pids) or alive_hosts() or live_placement_groups()):
            return
        await asyncio.sleep(0.1)
    assert pids_alive(pids) == [], "worker processes left"
    assert alive_hosts() == [], "Ray actors left"
    assert live_placement_groups() == [], "placement groups left"


def tcp_listeners(pid: int) -> list[tuple[str, int]]:
    """``(ip, port)`` of the IPv4 TCP sockets ``pid`` listens on."""
    inodes = socket_inodes(pid)
    found = []
    with open(f"/proc/{pid}/net/tcp") as f:
        for line in list(f)[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ip_hex, port_hex = fields[1].split(":")
                ip = ".".join(str(int(ip_hex[i:i + 2], 16)) for i in (6, 4, 2, 0))
                found.append((ip, int(port_hex, 16)))
    return found


def memfds(pid: int) -> list[str]:
    """Names of the actorexec shared-memory rings (memfds) that ``pid`` holds open, sorted
    (once each: Python's mmap holds a second fd of every mapped ring)."""
    return sorted({target.removeprefix("/memfd:").removesuffix(" (deleted)")
                   for target in fd_targets(pid) if target.startswith("/memfd:actorexec-")})


def handoff_sockets() -> list[str]:
    """Abstract unix socket names of shared-memory hand-offs listening on this host (an
    accepted connection, a rank's lifeline, shows the same name: not listening)."""
    listening = 0x10000  # __SO_ACCEPTCON in the Flags column
    with open("/proc/net/unix") as f:
        rows = [line.split() for line in list(f)[1:]]
    return [row[-1] for row in rows
            if row[-1].startswith("@actorexec-shm-") and int(row[3], 16) & listening]
