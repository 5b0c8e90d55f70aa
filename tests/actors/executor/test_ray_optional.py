"""Ray is an optional extra: actorexec imports without it (and never imports it unasked);
asking for the ray backend without it says how to install it, in Python and on the command
line. Runs whether Ray is installed or not: the child processes hide it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

HIDE_RAY = "import sys; sys.modules['ray'] = None  # as if not installed\n"


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def test_importing_actorexec_needs_no_ray_and_imports_none():
    result = python(textwrap.dedent("""
        import sys
        import actorexec.actors.engine, actorexec.actors.executor, actorexec.entrypoints.cli
        from actorexec.actors.executor import RayDistributedExecutor, BACKENDS
        assert "ray" in BACKENDS and "external_launcher" in BACKENDS
        print("ray imported" if "ray" in sys.modules else "no ray")
    """))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no ray"
    hidden = python(HIDE_RAY + "import actorexec.actors.executor; print('ok')")
    assert hidden.returncode == 0 and hidden.stdout.strip() == "ok", hidden.stderr


def test_the_ray_backend_without_ray_is_a_config_error_saying_how_to_install_it():
    result = python(HIDE_RAY + textwrap.dedent("""
        from actorexec.actors.executor import Executor
        from actorexec.protocol import Config, ConfigError, ModelConfig, ParallelConfig
        config = Config(model=ModelConfig(model="unused"),
                        parallel=ParallelConfig(distributed_executor_backend="ray"))
        try:
            Executor.get_class(config)
        except ConfigError as exc:
            print(exc)
    """))
    assert result.returncode == 0, result.stderr
    assert "pip install 'actorexec[ray]'" in result.stdout


def test_actorexec_serve_backend_ray_without_ray_is_a_one_line_usage_error(tmp_path):
    result = python(HIDE_RAY + "from actorexec.entrypoints.cli import main; "
                    "main(['serve', '--backend', 'ray'])")
    assert result.returncode == 2, result
    [line] = result.stderr.strip().splitlines()
    assert "--backend ray" in line and "pip install 'actorexec[ray]'" in line


@pytest.mark.parametrize("strategy", ["PACK", "STRICT_SPREAD"])
def test_placement_strategy_takes_rays_names_only(strategy):
    from actorexec.protocol import ConfigError, ParallelConfig

    assert ParallelConfig(placement_strategy=strategy).placement_strategy == strategy
    with pytest.raises(ConfigError, match="placement_strategy"):
        ParallelConfig(placement_strategy=strategy.lower())
    with pytest.raises(ConfigError, match="ray_address"):
        ParallelConfig(ray_address="")
