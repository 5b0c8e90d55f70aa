"""The Worker actor (one per rank) and what it reports about its health."""

from .health import WorkerHealth
from .worker import Worker

__all__ = ["Worker", "WorkerHealth"]
