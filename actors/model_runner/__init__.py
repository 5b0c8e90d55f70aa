"""The ModelRunner (inside each Worker): request state, inputs, forward, sampling."""

from actorexec.actors.model_runner.model_runner import ModelRunner

__all__ = ["ModelRunner"]
