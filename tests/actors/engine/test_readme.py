"""Every README code block runs as written: pasted into a file (Python) or a shell (bash).

Blocks are run in README order. An HTML comment on the line before a block
says what it needs: ``readme-test: starts-server`` (the command that starts the
server: it is started, on a free port, for the blocks after it),
``readme-test: needs-server`` (run against that server; ``127.0.0.1:8000``
becomes its address), or ``readme-test: skip: <reason>``. ``text`` blocks are
diagrams. Any other block is a program and must run with exit status 0.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.entrypoints.server import Server

README = Path(__file__).resolve().parents[3] / "README.md"
BLOCK = re.compile(
    r"(?:<!-- readme-test: (?P<mark>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


@dataclass
class Block:
    line: int
    lang: str
    mark: str
    body: str

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang or 'no language'}, {self.mark or 'program'})"


def blocks() -> list[Block]:
    text = README.read_text()
    return [Block(text.count("\n", 0, m.start("body")), m["lang"], m["mark"] or "", m["body"])
            for m in BLOCK.finditer(text)]


def test_every_block_is_a_program_or_says_why_not():
    for block in blocks():
        assert block.lang in ("python", "bash", "text"), f"{block}: say which language"
        if block.lang == "text":
            continue
        assert block.mark in ("", "starts-server", "needs-server") or \
            re.fullmatch(r"skip: \S.*", block.mark), f"{block}: unknown mark {block.mark!r}"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def run_block(block: Block, tmp_path: Path, cache: Path, base_url: str | None) -> None:
    body = block.body
    if base_url is not None:
        body = body.replace("http://127.0.0.1:8000", base_url)
    env = {**os.environ, "ACTOREXEC_CACHE": str(cache), "PYTHONPATH": os.pathsep.join(sys.path)}
    if block.lang == "python":
        program = tmp_path / f"readme_{block.line}.py"
        program.write_text(body)
        cmd = [sys.executable, str(program)]
    else:
        if "curl " in body and shutil.which("curl") is None:
            pytest.skip(f"{block}: curl is not installed")
        cmd = ["bash", "-euo", "pipefail", "-c", body]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, f"{block} failed:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip(), f"{block} printed nothing"


def server_args(block: Block) -> list[str]:
    """The block's ``actorexec serve ...`` command as arguments (comments dropped)."""
    (command,) = [line.split("#")[0] for line in block.body.splitlines()
                  if line.strip().startswith("actorexec serve")]
    args = shlex.split(command)[2:]
    assert "--port" not in args
    return args


def test_readme_blocks_run_as_written(tmp_path, cache):
    server: Server | None = None
    ran = 0
    try:
        for block in blocks():
            if block.lang == "text" or block.mark.startswith("skip:"):
                continue
            if block.mark == "starts-server":
                server = Server(*server_args(block), cache=cache)
                continue
            if block.mark == "needs-server":
                assert server is not None, f"{block}: no server block before it"
            run_block(block, tmp_path, cache, server.url if server else None)
            ran += 1
    finally:
        if server is not None:
            assert server.stop() == 0, server.stderr_text
    assert ran >= 4
