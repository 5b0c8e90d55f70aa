"""RPC envelopes: the first frame of every message, a tagged union.

A message is a list of frames: ``[envelope, payload?, *tensor_buffers]``.
``Call`` and ``Result`` are followed by one msgpack payload frame (the
arguments as a map keyed by parameter name, or the return value) and by the
raw buffers of any tensors the payload references. ``Failure`` and ``Ready``
stand alone.
"""

from __future__ import annotations

import msgspec


class Call(msgspec.Struct, tag="call", array_like=True, gc=False,
           forbid_unknown_fields=True):
    """Run ``method`` on the receiving actor.

    ``method`` is an allow-listed method name, or (only where the receiver
    explicitly allows it) ``"module:qualname"`` of a module-level function,
    called as ``function(actor, *args, **kwargs)``. ``deadline`` is an
    absolute ``time.time()``; a call that reaches the front of the mailbox
    after its deadline is answered with a ``TimeoutError`` failure, unrun.
    ``reply_on_success=False`` asks for a reply only if the call fails (the
    non-output ranks of ``execute_model``).
    """

    call_id: int
    method: str
    deadline: float | None = None
    reply_on_success: bool = True


class Result(msgspec.Struct, tag="result", array_like=True, gc=False,
             forbid_unknown_fields=True):
    """The call ``call_id`` returned; its value is in the payload frame."""

    call_id: int


class Failure(msgspec.Struct, tag="failure", array_like=True, gc=False,
              forbid_unknown_fields=True):
    """The call ``call_id`` raised; re-raised on the caller as a typed error.

    ``call_id`` is -1 when the failing frame could not be decoded far enough
    to know which call it was.
    """

    call_id: int
    exc_type: str
    message: str
    traceback: str = ""


class Ready(msgspec.Struct, tag="ready", array_like=True, gc=False,
            forbid_unknown_fields=True):
    """Sent once by a freshly started actor process when it serves calls."""

    rank: int
    pid: int


Envelope = Call | Result | Failure | Ready
