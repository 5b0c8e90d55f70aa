"""Event-loop set-up: uvloop when installed, the default asyncio loop otherwise.

uvloop is chosen per run through ``asyncio.Runner(loop_factory=...)``, never
with ``uvloop.install()``, so importing actorexec changes no global policy and
everything also works on the default loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory(use_uvloop: bool | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's factory when wanted (None = when installed); None means asyncio's default."""
    if use_uvloop is False:
        return None
    try:
        import uvloop
    except ImportError:
        if use_uvloop:
            raise
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], use_uvloop: bool | None = None, debug: bool = False) -> T:
    """Run ``main`` to completion on a fresh loop (uvloop when installed, unless told not to)."""
    with asyncio.Runner(loop_factory=loop_factory(use_uvloop), debug=debug) as runner:
        return runner.run(main)
