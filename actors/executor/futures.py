"""Combining per-rank futures into the one awaitable a caller gets back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger("actorexec.executor")


def _consume(fut: asyncio.Future[Any]) -> None:
    # Mark an exception as retrieved: the combined future already reports it.
    if not fut.cancelled():
        fut.exception()


def first_failure_or(primary: asyncio.Future[Any], others: Sequence[asyncio.Future[Any]],
                     on_divergence: Callable[[BaseException], None] | None = None,
                     ) -> asyncio.Future[Any]:
    """Resolves with ``primary``'s result; fails as soon as any of the futures fails.

    A rank that fails after ``primary`` already succeeded means the ranks no
    longer agree on state (one ran the step, another did not):
    ``on_divergence(error)`` is told, so the caller can stop trusting them.
    """
    out: asyncio.Future[Any] = primary.get_loop().create_future()

    def done(fut: asyncio.Future[Any]) -> None:
        _consume(fut)
        if out.done():
            if not fut.cancelled() and fut.exception() is not None:
                error = fut.exception()
                succeeded = not out.cancelled() and out.exception() is None
                logger.error("a rank failed after the reply rank answered: %s", error)
                if succeeded and on_divergence is not None:
                    on_divergence(error)  # type: ignore[arg-type]
            return
        if fut.cancelled():
            out.cancel()
        elif fut.exception() is not None:
            out.set_exception(fut.exception())  # type: ignore[arg-type]
        elif fut is primary:
            out.set_result(fut.result())

    for fut in (primary, *others):
        fut.add_done_callback(done)
    return out


def gather_ranks(futs: Sequence[asyncio.Future[Any]]) -> asyncio.Future[list[Any]]:
    """Resolves with every rank's result in rank order; fails at the first failure."""
    out: asyncio.Future[list[Any]] = futs[0].get_loop().create_future()
    remaining = [len(futs)]

    def done(fut: asyncio.Future[Any]) -> None:
        _consume(fut)
        if out.done():
            return
        if fut.cancelled():
            out.cancel()
        elif fut.exception() is not None:
            out.set_exception(fut.exception())  # type: ignore[arg-type]
        else:
            remaining[0] -= 1
            if remaining[0] == 0:
                out.set_result([f.result() for f in futs])

    for fut in futs:
        fut.add_done_callback(done)
    return out
