"""ZeroMQ transports behind one small interface: aiozmq, or pyzmq's ``zmq.asyncio``."""

from .base import (
    BACKENDS,
    Transport,
    TransportClosed,
    bind_router,
    connect_dealer,
    heartbeat_options,
    resolve_backend,
)

__all__ = ["BACKENDS", "Transport", "TransportClosed", "bind_router", "connect_dealer",
           "heartbeat_options", "resolve_backend"]
