"""The engine options ``serve`` and ``generate`` share, and the ``Config`` they make.

Everything a user can get wrong here is checked before any process starts,
and reported as a ``UsageError`` whose message is one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from actorexec.protocol import (
    CacheConfig,
    Config,
    ConfigError,
    DeviceConfig,
    ModelConfig,
    ParallelConfig,
    RestartConfig,
    SchedulerConfig,
)

DEFAULT_MODEL_NAME = "actorexec-default"


class UsageError(Exception):
    """A command-line mistake; the command prints its message (one line) and exits 2."""


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="DIR", help="local HF-format Llama/Qwen2/Qwen3 "
                        "directory (default: the built-in default model, made on first use)")
    parser.add_argument("--backend", choices=["uni", "mp", "ray"], default=None,
                        help="executor backend (default: uni for one rank, mp for more)")
    parser.add_argument("--tp", type=int, default=1, metavar="N", help="tensor-parallel size")
    parser.add_argument("--pp", type=int, default=1, metavar="N", help="pipeline-parallel size")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--max-model-len", type=int, default=None, metavar="N",
                        help="longest sequence (default: the model's)")
    parser.add_argument("--max-num-seqs", type=int, default=64, metavar="N",
                        help="most requests in one step")
    parser.add_argument("--seed", type=int, default=0, help="worker seed (unseeded sampling)")
    restart = RestartConfig()
    parser.add_argument("--max-restarts", type=int, default=restart.max_restarts, metavar="N",
                        help="restart a failed executor (a worker died) at most N times within "
                        f"{restart.window_s:g} s, resuming every request (0: fail at once)")


def resolve_model(model: str | None) -> tuple[str, str]:
    """``(model directory, default served name)``; the default model is made if missing."""
    if model is None:
        from actorexec.actors.engine import ensure_default_model

        return str(ensure_default_model()), DEFAULT_MODEL_NAME
    path = Path(model).expanduser()
    if not path.is_dir():
        raise UsageError(f"--model {model}: no such directory (a local HF-format model "
                         "directory is expected; nothing is downloaded)")
    if not (path / "config.json").is_file():
        raise UsageError(f"--model {model}: no config.json there (a local HF-format model "
                         "directory is expected)")
    return str(path), model


def check_backend(backend: str | None) -> None:
    """Ray is optional: without it, ``--backend ray`` says how to install it."""
    if backend != "ray":
        return
    from actorexec.actors.executor import Executor

    probe = Config(model=ModelConfig(model="."),
                   parallel=ParallelConfig(distributed_executor_backend="ray"))
    try:
        Executor.get_class(probe)
    except ValueError as exc:  # ConfigError: "... pip install 'actorexec[ray]'"
        raise UsageError(f"--backend ray: {exc}") from None


def config_from_args(args: argparse.Namespace, model_dir: str) -> Config:
    check_backend(args.backend)
    for name in ("tp", "pp", "max_num_seqs"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_restarts < 0:
        raise UsageError("--max-restarts must be at least 0")
    try:
        return Config(
            model=ModelConfig(model=model_dir, max_model_len=args.max_model_len, seed=args.seed),
            cache=CacheConfig(),
            parallel=ParallelConfig(tensor_parallel_size=args.tp, pipeline_parallel_size=args.pp,
                                    distributed_executor_backend=args.backend),
            scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs),
            device=DeviceConfig(device=args.device),
            restart=RestartConfig(max_restarts=args.max_restarts))
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
