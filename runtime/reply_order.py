"""Replies in call order, sent from the loop or straight from the work thread.

Every ordered call a mailbox takes gets a place (``seq``) in the reply order
and stays in :attr:`ReplyOrder.entries` until answered and popped by the
mailbox's replier. Exactly one answer per call: ``replied`` flips under one
lock, whoever sends. A call running on the work thread records its outcome
there; with ``from_thread`` (a host whose reply sink is thread-safe, such as
the shared-memory rings) the thread sends the reply itself when every earlier
call has been answered, and wakes the loop only if calls wait behind it.
Otherwise, and for replies that come later (a ``concurrent.futures.Future`` or
an awaitable returned from the thread), the loop is woken to send.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actorexec.protocol.envelopes import Call

# sink(call, ok, value_or_exception): delivers one reply (encode + send, or set a future).
# A sink that raises (the socket failed) is fatal for the actor.
ReplySink = Callable[[Call, bool, Any], None]


@dataclass(slots=True, eq=False)
class Pending:
    """A taken, ordered call. ``future``: its result when it runs on the loop; else the
    work thread fills ``outcome`` (ok, value or exception)."""

    call: Call
    sink: ReplySink
    seq: int
    future: asyncio.Future[Any] | None = None
    outcome: tuple[bool, Any] | None = None
    replied: bool = False  # flipped under ReplyOrder's lock, once
    reply_error: BaseException | None = None  # the sink raised on the work thread


def replies_later(value: Any) -> bool:
    """A result that is itself a promise of the reply (reply-later)."""
    return value is not None and (isinstance(value, concurrent.futures.Future)
                                  or inspect.isawaitable(value))


class ReplyOrder:
    """The calls a mailbox has taken and not yet popped, and who may answer next."""

    def __init__(self, wake_loop: Callable[[], None], from_thread: bool) -> None:
        self.entries: deque[Pending] = deque()
        self._wake_loop = wake_loop  # thread-safe: schedules the replier on the loop
        self._from_thread = from_thread
        self._lock = threading.Lock()
        self._taken = 0
        self._next = 0  # seq of the next call to answer; -1 once closed

    def add(self, call: Call, sink: ReplySink) -> Pending | None:
        """The next place in the reply order (the loop or the work thread takes calls);
        None once closed."""
        with self._lock:
            if self._next < 0:
                return None
            pending = Pending(call, sink, self._taken)
            self._taken += 1
            self.entries.append(pending)
        return pending

    @property
    def closed(self) -> bool:
        return self._next < 0

    def answer_alone(self, call: Call, sink: ReplySink, ok: bool, value: Any) -> bool:
        """Answers a call whose outcome is final at once, in the next place, without holding
        it: only when no call is held (none can be ahead of it); False (nothing sent) if
        one is, or once closed. Saves the common loop call its entry. A sink that raises
        propagates (on the loop: fatal)."""
        with self._lock:
            if self.entries or self._next < 0:
                return False
            self._taken += 1
            self._next += 1
            sink(call, ok, value)
        return True

    def pop_answered(self) -> None:
        """Drops answered calls from the front (the work thread's answers wake nobody)."""
        entries = self.entries
        with self._lock:
            while entries and entries[0].replied and entries[0].reply_error is None:
                entries.popleft()

    def pop(self, pending: Pending) -> None:
        """Drops ``pending`` if it is still at the front."""
        with self._lock:
            if self.entries and self.entries[0] is pending:
                self.entries.popleft()

    def send(self, pending: Pending, ok: bool, value: Any) -> bool:
        """Answers ``pending`` if it is next and unanswered; False otherwise. A sink that
        raises propagates (on the loop: fatal)."""
        with self._lock:
            if pending.replied or pending.seq != self._next:
                return False
            pending.replied = True
            self._next += 1
            pending.sink(pending.call, ok, value)
        return True

    def thread_will_answer(self, pending: Pending) -> bool:
        """Is ``pending`` still with the work thread (or a reply-later future it returned),
        which answers it or wakes the loop when done?"""
        if pending.future is not None:
            return False
        outcome = pending.outcome
        if outcome is None:
            return True  # still running: the thread answers, or wakes the loop, when done
        ok, value = outcome
        return (self._from_thread and ok and isinstance(value, concurrent.futures.Future)
                and not value.done())

    def close(self) -> tuple[list[Pending], list[Pending]]:
        """No call is added or answered from now on; returns (the calls that never got an
        answer, every call still held), and holds none."""
        with self._lock:
            held = list(self.entries)
            self.entries.clear()
            unanswered = [p for p in held if not p.replied]
            for pending in held:
                pending.replied = True
            self._next = -1
        return unanswered, held

    # -- on the work thread -------------------------------------------------
    def thread_done(self, pending: Pending, ok: bool, value: Any) -> None:
        """The call's function finished on the work thread."""
        pending.outcome = (ok, value)
        if not self._from_thread or (ok and inspect.isawaitable(value)):
            self._wake_loop()  # the loop answers (or awaits the reply-later awaitable)
        elif ok and isinstance(value, concurrent.futures.Future):
            value.add_done_callback(lambda fut: self._later_done(pending, fut))
        elif ok or isinstance(value, Exception):
            self._answer_from_thread(pending, ok, value)
        else:
            self._wake_loop()  # SystemExit and the like: the loop raises it

    def _later_done(self, pending: Pending, fut: concurrent.futures.Future[Any]) -> None:
        """A reply-later future completed (in whichever thread completed it)."""
        error = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or not (error is None or isinstance(error, Exception)):
            self._wake_loop()
            return
        pending.outcome = (error is None, fut.result() if error is None else error)
        self._answer_from_thread(pending, *pending.outcome)

    def _answer_from_thread(self, pending: Pending, ok: bool, value: Any) -> None:
        try:
            sent = self.send(pending, ok, value)
        except BaseException as exc:  # the replier raises it on the loop: fatal
            pending.reply_error = exc
            sent = False
        try:
            last: Pending | None = self.entries[-1]
        except IndexError:  # the loop popped it already: nothing waits behind it
            last = None
        if not sent or (last is not None and last is not pending):
            self._wake_loop()  # the loop answers it, or the calls waiting behind it
