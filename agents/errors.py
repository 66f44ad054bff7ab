"""Errors of the agents room that carry the work finished before the failure."""

from __future__ import annotations

from typing import Any, Sequence

from espl.types import Completion


class GenerationError(RuntimeError):
    """A backend failed for some conversations of a batch (after its retries).

    `completions[i]` is the finished Completion of conversation i, or None where it failed; `errors[i]`
    the error text of a failed one.
    """

    def __init__(self, message: str, completions: Sequence[Completion | None], errors: Sequence[str | None]):
        super().__init__(message)
        self.completions = list(completions)
        self.errors = list(errors)


class RolloutError(RuntimeError):
    """A rollout stopped because the policy failed. `trajectories` holds every episode that finished before,
    keyed by the episode's index in the request; `cause` is the backend's error."""

    def __init__(self, message: str, trajectories: dict[int, Any], cause: BaseException):
        super().__init__(message)
        self.trajectories = trajectories
        self.cause = cause
