"""Start ``actorexec serve`` as a real process on 127.0.0.1 (an ephemeral port) and stop it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

READY = re.compile(r"at http://127\.0\.0\.1:(\d+)/v1")
START_TIMEOUT_S = 120.0


def children(pid: int) -> list[int]:
    """Direct child pids (Linux /proc)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in \
        Path(f"/proc/{pid}/status").read_text().lower()


class Server:
    """One ``actorexec serve`` process; ``stop()`` sends SIGINT as Ctrl-C would."""

    def __init__(self, *args: str, cache: Path, env: dict[str, str] | None = None) -> None:
        self.cmd = [sys.executable, "-m", "actorexec", "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "ACTOREXEC_CACHE": str(cache), **(env or {})})
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._err_reader = threading.Thread(target=self._drain, args=(self.proc.stderr,
                                                                       self.stderr), daemon=True)
        self._err_reader.start()
        self.port = self._wait_ready()
        self.url = f"http://127.0.0.1:{self.port}"
        self._out_reader = threading.Thread(target=self._drain, args=(self.proc.stdout,
                                                                       self.stdout), daemon=True)
        self._out_reader.start()

    @staticmethod
    def _drain(stream: object, into: list[str]) -> None:
        for line in stream:        # type: ignore[attr-defined]
            into.append(line)

    def _wait_ready(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.stdout.append(line)
            if m := READY.search(line):
                return int(m.group(1))
        self.proc.kill()
        self.proc.wait()
        self._err_reader.join(5)
        raise RuntimeError(f"server did not start: {''.join(self.stdout + self.stderr)}")

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def post(self, path: str, body: dict[str, object], headers: dict[str, str] | None = None,
             ) -> tuple[int, dict[str, object]]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json",
                                              **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 30.0) -> int:
        """Signals the server and waits; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server ignored signal {sig} for {timeout_s} s") from None
        self._err_reader.join(5)
        self._out_reader.join(5)
        return code

    @property
    def stderr_text(self) -> str:
        return "".join(self.stderr)
