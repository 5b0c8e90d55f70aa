"""A test actor that takes steps and tensors and counts the calls that actually ran."""

from __future__ import annotations

import torch

from actorexec.protocol import SchedulerOutput
from actorexec.runtime import Actor, expose


class StepSink(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.ran = 0

    @expose
    def take(self, step: SchedulerOutput, extra: torch.Tensor | None = None) -> int:
        self.ran += 1
        return self.ran

    @expose
    def count(self) -> int:
        return self.ran
