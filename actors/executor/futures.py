"""One collective call's per-rank replies, judged together: the ranks must agree.

Every rank answers every call. The caller's future resolves once every rank
has answered successfully (with the list of results, or one rank's result),
and fails at the first failure. The ranks have *diverged*, and the executor
must fail, when:

- every rank has answered and some succeeded while others failed (a step ran
  on some ranks and not on others);
- with more than one rank, some rank has not answered by the call's deadline
  (it may run the call later, or wait in a collective for a rank that never
  will; nobody can tell, so the executor stops trusting its ranks);
- any rank reports :class:`ActorFatalError` (it stopped; its watchdog fired).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from actorexec.protocol.errors import ExecutorFailedError, RemoteError
from actorexec.runtime import ActorFatalError, CallTimeoutError
from actorexec.runtime.refs import ReplyFuture


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class CollectiveReplies:
    """The per-rank futures of one call; ``result`` is what the caller awaits.

    ``reply_rank=None``: ``result`` is every rank's result in rank order;
    otherwise that rank's result alone. ``on_broken(error)`` is told once if
    the ranks diverged (see the module docstring).
    """

    def __init__(self, method: str, futs: Sequence[asyncio.Future[Any]], reply_rank: int | None,
                 on_broken: Callable[[BaseException], None],
                 notice_deaths: Callable[[], None] = lambda: None) -> None:
        self.method = method
        self.futs = list(futs)
        self.reply_rank = reply_rank
        self._on_broken = on_broken
        self._notice_deaths = notice_deaths
        self._broken = False
        self._answered = 0
        self._failed = 0
        self.result: asyncio.Future[Any] = self.futs[0].get_loop().create_future()
        for fut in self.futs:
            if isinstance(fut, ReplyFuture):
                fut.add_eager_callback(self._done)  # judged as it settles: one loop turn less
            else:
                fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[Any]) -> None:
        # May run eagerly, inside another rank's settling (a broken executor fails every
        # pending call): so this rank's outcome reaches ``result`` before anything breaks.
        if not fut.cancelled() and fut.exception() is None:  # success: the per-step case
            self._answered += 1
            if self._answered == len(self.futs):
                self._judge()
            return
        _retrieve(fut)  # the caller sees failures through ``result`` (or the futures themselves)
        self._answered += 1
        error = None if fut.cancelled() else fut.exception()
        if isinstance(error, RemoteError):
            # A rank that failed may have failed because another died (a collective lost
            # its peer): a death not yet seen is handled first, and names the dead rank.
            self._notice_deaths()
        if error is not None or fut.cancelled():
            self._failed += 1
        if not self.result.done():
            if error is not None:
                self.result.set_exception(error)
            elif fut.cancelled():
                self.result.cancel()
        if fut.cancelled():
            self._break(ExecutorFailedError(f"call {self.method!r} was cancelled on a rank"))
        elif isinstance(error, ActorFatalError):
            self._break(error)
        elif isinstance(error, CallTimeoutError) and len(self.futs) > 1:
            late = [r for r, f in enumerate(self.futs) if not f.done() or f is fut]
            self._break(ExecutorFailedError(
                f"ranks diverged: call {self.method!r} got no reply from rank(s) {late} by its "
                "deadline; whether they ran it is unknown, so the ranks can no longer be "
                f"trusted to agree ({error})"))
        if self._answered == len(self.futs):
            self._judge()

    def _judge(self) -> None:
        """Every rank has answered: the outcomes must agree."""
        if self._failed == 0:
            if not self.result.done():
                self.result.set_result([f.result() for f in self.futs] if self.reply_rank is None
                                       else self.futs[self.reply_rank].result())
            return
        failed = [r for r, f in enumerate(self.futs) if f.cancelled() or f.exception()]
        if len(failed) < len(self.futs):
            ok = [r for r in range(len(self.futs)) if r not in failed]
            first = self.futs[failed[0]]
            why = "cancelled" if first.cancelled() else repr(first.exception())
            self._break(ExecutorFailedError(
                f"ranks diverged: call {self.method!r} succeeded on rank(s) {ok} and failed on "
                f"rank(s) {failed} (rank {failed[0]}: {why}); their states may differ"))

    def _break(self, error: BaseException) -> None:
        if self._broken:
            return
        self._broken = True
        self._on_broken(error)
