"""The ``actorexec`` command as a user runs it: one-line errors, Ctrl-C, rejected prompts."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "actorexec"]


def run_cli(*args: str, cache: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "ACTOREXEC_CACHE": str(cache)})


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("args, message", [
    (["serve", "--bogus"], "unrecognized arguments: --bogus"),
    (["serve", "--tp", "0"], "--tp must be at least 1"),
    (["serve", "--model", "/nonexistent/model"], "no such directory"),
    pytest.param(["serve", "--backend", "ray"], "pip install 'actorexec[ray]'", marks=(
        pytest.mark.skipif(importlib.util.find_spec("ray") is not None,
                           reason="Ray is installed: --backend ray runs (tests/actors/executor/"
                                  "test_ray_executor.py runs it)"))),
    (["generate", "--backend", "uni", "--tp", "2", "Hi"], "use backend 'mp'"),
    (["serve", "--port", "70000"], "not a TCP port"),
])
def test_usage_errors_are_one_line_without_traceback(cache, args, message):
    result = run_cli(*args, cache=cache)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_a_port_in_use_is_a_one_line_error_before_the_model_loads(cache):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = run_cli("serve", "--port", str(port), cache=cache)
    assert result.returncode == 2
    assert result.stderr.strip() == \
        f"actorexec serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_an_over_long_prompt_is_rejected_alone_and_the_others_finish(cache):
    long_prompt = "x" * 100
    result = run_cli("generate", "--lines", "--max-model-len", "64", "--max-tokens", "8",
                     "--ignore-eos", "This program", long_prompt, "Permission is", cache=cache)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[1] ''  <rejected:" in out and "longer than the maximum model length 64" in out
    assert out.count("<length>") == 2           # prompts 0 and 2 ran to max_tokens
    assert "16 tokens for 3 prompts" in out


def test_ctrl_c_during_generate_exits_quietly(cache):
    proc = subprocess.Popen([*CLI, "generate", "--lines", "--max-tokens", "900",
                             "--ignore-eos", "Hello"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ACTOREXEC_CACHE": str(cache)})
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while "[0] '" not in proc.stdout.readline():     # tokens are streaming
        assert time.monotonic() < deadline
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "actorexec generate: interrupted"
    assert "Traceback" not in err


def test_python_m_entrypoints_and_the_console_script_show_help():
    for cmd in ([sys.executable, "-m", "actorexec.entrypoints"], CLI):
        result = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "serve" in result.stdout
    script = Path(sys.executable).with_name("actorexec")
    if not script.exists():
        pytest.skip("actorexec is not installed in this environment (no console script)")
    result = subprocess.run([str(script), "serve", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "--served-model-name" in result.stdout


def test_with_restarts_off_a_worker_death_during_generate_is_reported_once(cache):
    from tests.entrypoints.server import children, cmdline

    proc = subprocess.Popen([*CLI, "generate", "--backend", "mp", "--max-restarts", "0",
                             "--lines", "--max-tokens", "900", "--ignore-eos",
                             "One", "Two", "Three"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ACTOREXEC_CACHE": str(cache)})
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while "[0] '" not in proc.stdout.readline():
        assert time.monotonic() < deadline
    (worker,) = [p for p in children(proc.pid) if "spawn_main" in cmdline(p)]
    os.kill(worker, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "Traceback" not in err, err
    # Three streams fail with the same error; the demo says so once.
    assert err.count("the engine failed: worker rank 0") == 1, err
