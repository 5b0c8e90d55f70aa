"""The README's Python examples run as written (docs must match the code)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from actorexec.actors.engine import ensure_default_model

README = Path(__file__).resolve().parents[3] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


async def test_readme_python_examples_run(tmp_path, capsys):
    blocks = python_blocks()
    assert len(blocks) >= 2
    model = ensure_default_model(tmp_path / "default")
    for src in blocks:
        src = src.replace("ensure_default_model()", f"ensure_default_model({str(model)!r})")
        namespace = {"path": str(model)}
        code = compile(src, str(README), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, namespace)
        if result is not None:
            await result
    assert capsys.readouterr().out.strip()
