"""Executors: one worker per rank, driven by ``collective_rpc`` (uni, mp, ray and
external-launcher backends). Ray is imported only when the ray backend starts."""

from .abstract import BACKENDS, Executor
from .external_launcher import ExecutorWithExternalLauncher
from .multiproc import MultiprocExecutor
from .ray_distributed import RayDistributedExecutor
from .uniproc import UniProcExecutor

__all__ = ["BACKENDS", "Executor", "ExecutorWithExternalLauncher", "MultiprocExecutor",
           "RayDistributedExecutor", "UniProcExecutor"]
