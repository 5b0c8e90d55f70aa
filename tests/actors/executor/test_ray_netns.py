"""Across a real network boundary: two Ray nodes in two network namespaces, PP=2.

The test makes two namespaces joined by one veth pair (addresses of its own,
10.213.<n>.1 and .2; no link to the host's network, so traffic flows only
between them), starts a Ray head in the first and a Ray node in the second
(``ray start``), and runs the driver inside the first. Each pipeline stage
runs in its own namespace; steps reach the first on the shared-memory rings
(it shares the driver's node) and cross the veth to the second on our tcp
transport, and the activations cross on gloo. The tokens must equal the single-rank engine's.
Skipped, with the reason, where namespaces cannot be made (no root, no ``ip``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actorexec.runtime import run
from tests.actors.test_executor_runs_models import model_config

from .ray_cluster import ROOT, ray
from .test_ray_models import engine_tokens

pytestmark = pytest.mark.slow

SUBNET = f"10.213.{os.getpid() % 250}"
HEAD_IP, NODE_IP = f"{SUBNET}.1", f"{SUBNET}.2"
GCS_PORT = 6379


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def namespaces() -> Iterator[tuple[str, str]]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed: cannot make network namespaces")
    tag = f"{os.getpid() % 100000}"
    ns_a, ns_b, veth_a, veth_b = f"axr{tag}a", f"axr{tag}b", f"axv{tag}a", f"axv{tag}b"
    made = ip("netns", "add", ns_a)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        ip("netns", "add", ns_b).check_returncode()
        ip("link", "add", veth_a, "type", "veth", "peer", "name", veth_b).check_returncode()
        for ns, veth, addr in ((ns_a, veth_a, HEAD_IP), (ns_b, veth_b, NODE_IP)):
            ip("link", "set", veth, "netns", ns).check_returncode()
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", veth).check_returncode()
            ip("-n", ns, "link", "set", veth, "up").check_returncode()
            ip("-n", ns, "link", "set", "lo", "up").check_returncode()
            # Ray finds a node's own IP by "connecting" a UDP socket outwards: a default
            # route over the veth lets it (the other end forwards nothing further).
            ip("-n", ns, "route", "add", "default", "dev", veth).check_returncode()
        yield ns_a, ns_b
    finally:
        for ns in (ns_a, ns_b):
            kill_everything_in(ns)
            ip("netns", "del", ns)  # takes the veth pair with it


def kill_everything_in(ns: str) -> None:
    """Every process in our own namespace was started by this test (Ray's included)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(p) for p in ip("netns", "pids", ns).stdout.split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline:
            pids = [int(p) for p in ip("netns", "pids", ns).stdout.split()]
            time.sleep(0.1)
        if not pids:
            return
    raise AssertionError(f"processes {pids} outlived SIGKILL in namespace {ns}")


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def ray_start(ns: str, env: dict[str, str], temp_dir: Path,
              *args: str) -> subprocess.Popen[bytes]:
    """``ray start`` in ``ns``; its session files (and the "current cluster" address file
    that a later local ``ray.init()`` would read) go to ``temp_dir``, removed afterwards."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    return subprocess.Popen(in_ns(ns, ray_cli, "start", "--block", "--num-cpus", "1",
                                  "--disable-usage-stats", f"--temp-dir={temp_dir}", *args),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)


@pytest.mark.timeout(300)
def test_pp2_with_one_stage_per_network_namespace_gives_the_single_rank_tokens(
        namespaces, checkpoints):
    assert ray is not None
    ns_a, ns_b = namespaces
    model = str(checkpoints["llama"])
    want = run(engine_tokens(model_config(model, "uni")))
    # This cluster's own token (Ray authenticates every node and driver by one).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, *sys.path]),
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-netns-", dir="/tmp"))  # short: socket paths
    head = ray_start(ns_a, env, temp_dir, "--head", f"--node-ip-address={HEAD_IP}",
                     f"--port={GCS_PORT}", "--include-dashboard=false")
    node = ray_start(ns_b, env, temp_dir, f"--address={HEAD_IP}:{GCS_PORT}",
                     f"--node-ip-address={NODE_IP}")
    try:
        driver = subprocess.run(
            in_ns(ns_a, sys.executable, "-m", "tests.actors.executor.ray_netns_driver", model,
                  f"{HEAD_IP}:{GCS_PORT}"),
            capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
        assert driver.returncode == 0, driver.stderr[-4000:]
        [line] = [x for x in driver.stdout.splitlines() if x.startswith("{")]
        result = json.loads(line)
        # Rank 0 shares the driver's node: on the rings; rank 1 across the veth: tcp.
        assert result["placements"] == [[0, 0, HEAD_IP, "shm"], [1, 1, NODE_IP, "tcp"]]
        assert result["tokens"] == want
    finally:
        for proc in (node, head):  # then the fixture ends whatever else runs in the namespaces
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        kill_everything_in(ns_a)
        kill_everything_in(ns_b)
        shutil.rmtree(temp_dir, ignore_errors=True)
