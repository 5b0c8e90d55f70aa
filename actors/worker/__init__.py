"""The Worker actor (one per rank)."""

from .worker import Worker

__all__ = ["Worker"]
