"""Runs Triton kernels on the CPU through Triton's interpreter, where that is possible.

The interpreter must be switched on before ``triton`` is first imported (its
own library functions are wrapped for one mode at import), so a test module
calls ``use_triton_interpreter()`` at import time. It is used only where
there is no CUDA device: on a GPU machine the same process compiles real
kernels, and the GPU-marked tests cover them instead.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch


def use_triton_interpreter() -> bool:
    """True when Triton kernels in this process run in the CPU interpreter."""
    if importlib.util.find_spec("triton") is None or torch.cuda.is_available():
        return False
    if "triton" in sys.modules:  # imported earlier in compiled mode: cannot switch now
        return os.environ.get("TRITON_INTERPRET") == "1"
    os.environ["TRITON_INTERPRET"] = "1"
    _index_scalars_with_numpy_2_4()
    return True


def _index_scalars_with_numpy_2_4() -> None:
    """The interpreter holds scalars as shape-(1,) arrays and turns them into loop bounds
    with ``int(array)``, which NumPy >= 2.4 refuses; take the single element instead."""
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patched(tensor: type, scope: object) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__",  # type: ignore[attr-defined]
                       lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched


def run_kernel_check(script: str) -> None:
    """Runs ``script`` in a fresh interpreter with the interpreter switched on where there is
    no CUDA (it must be on before triton is first imported, so not in the test process,
    whose other tests keep the compiled paths); the script prints ``ok`` when it passes."""
    import subprocess
    import textwrap
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    prelude = ("import sys\n"
               f"sys.path.insert(0, {root!r})\n"
               "from tests.triton_interpret import use_triton_interpreter\n"
               "use_triton_interpreter()\n")
    out = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok" in out.stdout
