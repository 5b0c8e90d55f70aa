"""A call turned into a function of no arguments, refused before anything runs.

What the mailbox runs for a call: an allow-listed method with its arguments
decoded strictly from the wire (or, in the caller's own loop, already bound
by name), or, where the actor allows it, a module-level function named by
path. A call that may not run, or whose arguments do not decode, raises here.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from actorexec.protocol.codec import Frame, MethodSpec, generic_spec
from actorexec.protocol.envelopes import Call
from actorexec.protocol.errors import MethodNotAllowedError

from .actor import Actor


@dataclass(slots=True)
class LocalArgs:
    """Arguments of an in-loop call: already bound by name, never encoded."""

    kwargs: dict[str, Any]
    function: Callable[..., Any] | None = None  # uni executor: a callable, run as fn(actor, ...)
    args: Sequence[Any] = field(default_factory=tuple)


def check_deadline(call: Call) -> None:
    """Refuses a call that reached the actor after its deadline (absolute ``time.time()``)."""
    if call.deadline is not None and time.time() > call.deadline:
        raise TimeoutError(f"call {call.method!r} reached the actor after its deadline; not run")


def bind_call(actor: Actor, specs: dict[str, MethodSpec], call: Call,
              payload: Sequence[Frame] | LocalArgs) -> Callable[[], Any]:
    """``call`` on ``actor`` as a function of no arguments; refused calls raise here."""
    if isinstance(payload, LocalArgs) and payload.function is not None:
        return functools.partial(payload.function, actor, *payload.args, **payload.kwargs)
    spec = specs.get(call.method)
    if spec is None:
        return _bind_by_path(actor, specs, call, payload)
    kwargs = payload.kwargs if isinstance(payload, LocalArgs) else spec.decode_args(payload)
    return functools.partial(getattr(actor, call.method), **kwargs)


def _bind_by_path(actor: Actor, specs: dict[str, MethodSpec], call: Call,
                  payload: Sequence[Frame] | LocalArgs) -> Callable[[], Any]:
    name = type(actor).__name__
    if ":" not in call.method or not actor.allow_callable_rpc:
        raise MethodNotAllowedError(f"{name}.{call.method} is not on the RPC allow-list "
                                    f"({', '.join(sorted(specs))})")
    module, _, qualname = call.method.partition(":")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    kw = payload.kwargs if isinstance(payload, LocalArgs) else (
        generic_spec().decode_args(payload))
    return functools.partial(target, actor, *kw["args"], **kw["kwargs"])
