"""The reference engine: FCFS continuous batching over an Executor, streaming tokens.

``AsyncEngine`` imports the executor; the pure-Python parts (``Scheduler``,
``BlockPool``, tokenizers, the default model) import without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .block_pool import BlockPool
from .default_model import default_model_dir, ensure_default_model
from .request import FinishReason, Request, RequestOutput, RequestStatus
from .request_stream import RequestStream
from .scheduler import Scheduler
from .tokenizer import ByteTokenizer, Tokenizer, load_tokenizer

if TYPE_CHECKING:
    from .engine import AsyncEngine, EngineStats
    from .supervisor import RestartRecord


def __getattr__(name: str) -> Any:
    # Lazy: the engine pulls in the executor (and torch through it); the scheduler does not.
    if name in ("AsyncEngine", "EngineStats"):
        from . import engine

        return getattr(engine, name)
    if name == "RestartRecord":
        from . import supervisor

        return supervisor.RestartRecord
    raise AttributeError(name)


__all__ = [
    "AsyncEngine", "BlockPool", "ByteTokenizer", "EngineStats", "FinishReason", "Request",
    "RequestOutput", "RequestStatus", "RequestStream", "RestartRecord", "Scheduler", "Tokenizer",
    "default_model_dir", "ensure_default_model", "load_tokenizer",
]
