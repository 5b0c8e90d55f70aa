"""A runtime-level test actor (no Worker, no torch): counts what actually ran."""

from __future__ import annotations

import os

from actorexec.runtime import Actor, expose


class Counter(Actor):
    def __init__(self, start: int) -> None:
        super().__init__()
        self.count = start

    @expose
    def incr(self, by: int) -> int:
        self.count += by
        return self.count

    @expose
    def echo(self, data: bytes) -> bytes:
        return data

    @expose
    def pid(self) -> int:
        return os.getpid()

    def secret(self) -> None:  # not exposed: must never run from outside
        self.count = -1000
