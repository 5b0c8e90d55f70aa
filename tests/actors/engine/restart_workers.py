"""Test workers for engine restarts: the real Worker actor (see executor/workers.py) whose
stand-in runner crashes its process on one request's input, as a bad kernel might."""

from __future__ import annotations

import os
import signal
from typing import Any

from actorexec.protocol import SchedulerOutput
from tests.actors.executor.workers import EchoRunner, EchoWorker

POISON_TOKEN = 99   # a prompt starting with this token kills the worker that computes it


class PoisonRunner(EchoRunner):
    """Echoes step ids as tokens, and SIGKILLs its own process whenever a step computes a
    prompt that starts with ``POISON_TOKEN`` (a new request: sent first, or recomputed)."""

    def execute_model(self, scheduler_output: SchedulerOutput) -> Any:
        if any(new.prompt_token_ids[0] == POISON_TOKEN
               for new in scheduler_output.scheduled_new_reqs):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().execute_model(scheduler_output)


class PoisonWorker(EchoWorker):
    def load_model(self) -> None:
        self.log.append("load_model")
        self.model_runner = PoisonRunner(self)
