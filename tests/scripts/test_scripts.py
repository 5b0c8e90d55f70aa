"""The set-up script and the programs that write files, run as a new user runs them."""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bootstrap_skips_a_done_install_and_says_what_it_ignored(tmp_path):
    """A real bootstrap into a fresh venv that sees this environment's packages (torch,
    dependencies) through a .pth file, so nothing large is downloaded."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for folder in ("actors", "protocol", "runtime", "entrypoints"):
        (repo / folder).symlink_to(ROOT / folder)
    for name in ("pyproject.toml", "setup.py", "README.md", "scripts/bootstrap.sh"):
        shutil.copy(ROOT / name, repo / name)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(repo / ".venv")], check=True, timeout=120)
    site = next((repo / ".venv" / "lib").glob("python*/site-packages"))
    (site / "zz_outer_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def bootstrap(**extra_env: str) -> str:
        result = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=repo, text=True,
                                capture_output=True, timeout=600, env={**env, **extra_env})
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    first = bootstrap()
    assert "torch" in first and "already installed: kept" in first
    assert "==> installing actorexec into .venv (editable)" in first
    t0 = time.monotonic()
    second = bootstrap(PYTHON="/no/such/python")
    assert "PYTHON=/no/such/python is ignored: .venv already exists" in second
    assert "==> actorexec already installed in .venv (pyproject.toml unchanged): skipped" \
        in second
    assert "pip" not in second.replace("pyproject", "")       # pip did not run
    assert time.monotonic() - t0 < 60
    # A changed pyproject.toml is a reason to install again.
    with open(repo / "pyproject.toml", "a") as f:
        f.write("\n# changed\n")
    assert "==> installing actorexec into .venv (editable)" in bootstrap()


def test_training_the_default_model_writes_a_new_directory_unless_asked(tmp_path):
    pytest.importorskip("transformers")
    from actorexec.actors.engine.default_model import DATA_DIR

    shipped = DATA_DIR / "model.safetensors"
    before = hashlib.sha256(shipped.read_bytes()).hexdigest() if shipped.exists() else None
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "text").write_text("Permission is hereby granted, free of charge. " * 40)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_default_model.py"), "--steps", "2",
         "--batch", "2", "--seq", "16", "--corpus", str(corpus)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    (written,) = tmp_path.glob("trained-default-model-*/model.safetensors")
    assert written.stat().st_size > 0
    after = hashlib.sha256(shipped.read_bytes()).hexdigest() if shipped.exists() else None
    assert after == before                          # the shipped weights are untouched


def _default_out(script: Path) -> str:
    """The value of the script's ``--out`` default, evaluated as the script would."""
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" \
                and node.args and isinstance(node.args[0], ast.Constant) \
                and node.args[0].value == "--out":
            (default,) = [kw.value for kw in node.keywords if kw.arg == "default"]
            code = compile(ast.Expression(default), str(script), "eval")
            return str(eval(code, {"os": os, "time": time, "__file__": str(script)}))
    raise AssertionError(f"{script} has no --out argument")


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")
                                          if "--out" in p.read_text()))
def test_benchmarks_write_a_new_file_by_default(script):
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split())
    out = Path(_default_out(ROOT / "benchmarks" / script))
    relative = os.path.relpath(out if out.is_absolute() else ROOT / out, ROOT)
    assert relative not in tracked and not (ROOT / relative).exists(), relative


def test_the_direct_executor_example_runs_prefill_and_decode_steps():
    """examples/direct_executor.py builds steps by hand (the README points to it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "direct_executor.py")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("generated token ids [")
    assert sum(line.startswith("step ") for line in lines) == 8   # 1 prefill + 7 decode steps
