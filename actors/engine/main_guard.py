"""Catches the classic spawn mistake: starting worker processes from an unguarded script.

Worker processes are *spawned*: each starts a fresh interpreter that re-imports
the parent's ``__main__`` script before running the worker. A script whose
top level starts an engine (no ``if __name__ == "__main__":``) would start
another engine inside every worker, and Python reports that as a long spawn
traceback. Here it becomes one line, before any process is started.
"""

from __future__ import annotations

import ast
import multiprocessing
import sys
from pathlib import Path

from actorexec.protocol import ConfigError

ADVICE = ('put the code that starts the engine under `if __name__ == "__main__":` '
          '(worker processes re-import the main script when they start)')


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (either operand order)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    sides = [node.test.left, *node.test.comparators]
    names = {s.id for s in sides if isinstance(s, ast.Name)}
    consts = {s.value for s in sides if isinstance(s, ast.Constant)}
    return "__name__" in names and "__main__" in consts


def unguarded_main_script() -> Path | None:
    """The main script if spawned workers would re-run its top level unguarded, else None.

    Scripts (``python x.py``) and modules run with ``-m`` are re-imported by
    spawn; package ``__main__`` modules, ``-c`` code and interactive sessions
    are not (multiprocessing skips them), so those are always fine.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and (spec.name == "__main__" or spec.name.endswith(".__main__")):
        return None
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py"):
        return None
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    if any(_is_main_guard(node) for node in tree.body):
        return None
    return Path(path)


def check_spawn_safe(spawns_workers: bool) -> None:
    """Raises (one line) before anything starts if spawned workers would re-run the caller.

    In a worker that is still re-importing the parent's script, it exits the
    worker with the same one line (the script got past the static check).
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise SystemExit(f"actorexec: an engine was started while a worker process was "
                         f"starting: {ADVICE}")
    if spawns_workers and (script := unguarded_main_script()) is not None:
        raise ConfigError(f"{script} starts worker processes without a main guard: {ADVICE}")
