"""Executors: one worker per rank, driven by ``collective_rpc`` (uni, mp backends)."""

from .abstract import BACKENDS, Executor
from .multiproc import MultiprocExecutor
from .uniproc import UniProcExecutor

__all__ = ["BACKENDS", "Executor", "MultiprocExecutor", "UniProcExecutor"]
