"""The server with worker processes (mp backend): health after a worker dies, and Ctrl-C
under load leaving nothing behind."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.entrypoints.server import Server, alive, children, cmdline

MODEL = "actorexec-default"


def workers(server: Server) -> list[int]:
    return [p for p in children(server.proc.pid) if "spawn_main" in cmdline(p)]


@pytest.fixture
def tmpdir_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "tmp").mkdir()
    return {"TMPDIR": str(tmp_path / "tmp")}


def test_with_restarts_off_health_turns_503_once_a_worker_dies(tmp_path, tmpdir_env):
    server = Server("--backend", "mp", "--max-restarts", "0", cache=tmp_path / "cache",
                    env=tmpdir_env)
    try:
        assert server.get("/health")[0] == 200
        status, body = server.post("/v1/completions", {"model": MODEL, "prompt": "Hi",
                                                       "max_tokens": 3})
        assert status == 200 and body["usage"]["completion_tokens"] == 3
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", "/v1/completions", json.dumps(
            {"model": MODEL, "prompt": "Hi", "max_tokens": 900, "ignore_eos": True,
             "stream": True}), {"content-type": "application/json"})
        stream = conn.getresponse()
        stream.readline()
        (worker,) = workers(server)
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while server.get("/health")[0] != 503:
            assert time.monotonic() < deadline, "health still 200 five seconds after the death"
            time.sleep(0.05)
        status, body = server.post("/v1/completions", {"model": MODEL, "prompt": "Hi"})
        assert status == 503 and body["error"]["code"] == "engine_failed"
        # The stream that was running ends with an error event, then [DONE].
        events = stream.read().decode().strip().split("\n\n")
        conn.close()
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == "engine_failed"
    finally:
        code = server.stop()
    assert code == 0 and "Traceback" not in server.stderr_text, server.stderr_text
    # One event, one line: the death is reported once, not once per pending call.
    assert sum("died" in line for line in server.stderr) <= 1, server.stderr_text


def test_a_worker_death_mid_stream_restarts_the_executor_with_health_degraded_meanwhile(
        tmp_path, tmpdir_env):
    server = Server("--backend", "mp", cache=tmp_path / "cache", env=tmpdir_env)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps(
            {"model": MODEL, "prompt": "Hi", "max_tokens": 400, "ignore_eos": True,
             "stream": True, "stream_options": {"include_usage": True}}),
            {"content-type": "application/json"})
        stream = conn.getresponse()
        stream.readline()
        (worker,) = workers(server)
        os.kill(worker, signal.SIGKILL)
        codes = []
        deadline = time.monotonic() + 60
        while (health := server.get("/health"))[0] != 200 or not codes:
            assert time.monotonic() < deadline, f"no recovery within 60 s: {codes}"
            if health[0] == 503:
                codes.append(json.loads(health[1])["error"]["code"])
            time.sleep(0.02)
        assert set(codes) == {"engine_restarting"}
        assert workers(server) != [worker]
        # The stream paused and went on: every token, no error event.
        events = stream.read().decode().strip().split("\n\n")
        conn.close()
        assert events[-1] == "data: [DONE]" and '"error"' not in "".join(events)
        assert json.loads(events[-2].removeprefix("data: "))["usage"]["completion_tokens"] == 400
    finally:
        code = server.stop()
    assert code == 0 and "Traceback" not in server.stderr_text, server.stderr_text
    assert server.stderr_text.count("executor restart 1 ") == 1, server.stderr_text


def test_ctrl_c_under_load_stops_cleanly_and_leaves_nothing(tmp_path, tmpdir_env):
    server = Server("--backend", "mp", cache=tmp_path / "cache", env=tmpdir_env)
    procs = workers(server)
    assert procs
    conns = []
    for i in range(4):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", "/v1/completions", json.dumps(
            {"model": MODEL, "prompt": f"Stream {i}", "max_tokens": 900, "ignore_eos": True,
             "stream": True}), {"content-type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        resp.readline()
        conns.append(conn)
    t0 = time.monotonic()
    code = server.stop(signal.SIGINT)
    elapsed = time.monotonic() - t0
    for conn in conns:
        conn.close()
    assert code == 0, server.stderr_text
    assert "Traceback" not in server.stderr_text, server.stderr_text
    assert elapsed < 15, f"shutdown took {elapsed:.1f} s"
    assert not [p for p in procs if alive(p)]
    assert list(Path(tmpdir_env["TMPDIR"]).iterdir()) == []      # no ipc directory left
