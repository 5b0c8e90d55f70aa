"""Tiny checkpoints of every architecture, made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.checkpoints import ARCHITECTURES, make_tiny_checkpoint


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {arch: make_tiny_checkpoint(root / arch, arch) for arch in ARCHITECTURES}
