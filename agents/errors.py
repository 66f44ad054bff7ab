"""Errors of the agents room that carry the work finished before the failure."""

from __future__ import annotations

from typing import Any, Literal, Sequence

from espl.types import Completion

# Why a request failed, decided once where the transport is known (the backend), so callers branch on a
# kind instead of parsing error text: the mutator counts each as a mutation outcome and turns
# grammar-constrained decoding off only for "schema_refused".
ErrorKind = Literal["schema_refused", "context_overflow", "bad_request", "refused", "timeout", "connection",
                    "server_error", "error"]


def error_kind(exc: BaseException, *, constrained: bool = False) -> ErrorKind:
    """The kind of a backend exception. `constrained`: the request asked for a JSON-schema reply, so a 400
    that names the schema/response_format (and not the context) is the server refusing the schema."""
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    if name == "APITimeoutError" or isinstance(exc, TimeoutError):
        return "timeout"
    if name == "APIConnectionError" or isinstance(exc, ConnectionError):
        return "connection"
    if isinstance(status, int) and status >= 500:
        return "server_error"
    if status in (401, 403, 404, 422, 429):
        return "refused"
    if status == 400:
        text = f"{getattr(exc, 'message', '')} {getattr(exc, 'body', '')}".lower()
        if any(w in text for w in ("context", "too long", "maximum length", "exceeds")):
            return "context_overflow"
        if constrained and any(w in text for w in ("response_format", "json_schema", "schema", "grammar")):
            return "schema_refused"
        return "bad_request"
    return "error"


class GenerationError(RuntimeError):
    """A backend failed for some conversations of a batch (after its retries).

    `completions[i]` is the finished Completion of conversation i, or None where it failed; `errors[i]`
    the error text of a failed one, `kinds[i]` its `ErrorKind` (None where it did not fail).
    """

    def __init__(self, message: str, completions: Sequence[Completion | None], errors: Sequence[str | None],
                 kinds: Sequence[ErrorKind | None] | None = None):
        super().__init__(message)
        self.completions = list(completions)
        self.errors = list(errors)
        self.kinds: list[ErrorKind | None] = list(kinds) if kinds is not None else [
            None if e is None else "error" for e in self.errors]

    @property
    def failed_kinds(self) -> set[ErrorKind]:
        return {k for k in self.kinds if k is not None}


class RolloutError(RuntimeError):
    """A rollout stopped because the policy failed. `trajectories` holds every episode that finished before,
    keyed by the episode's index in the request; `cause` is the backend's error."""

    def __init__(self, message: str, trajectories: dict[int, Any], cause: BaseException):
        super().__init__(message)
        self.trajectories = trajectories
        self.cause = cause


class AdapterMismatch(ValueError):
    """Adapter weights that do not fit the policy (other model, LoRA rank or target modules); the message
    names the first weight that does not fit and the fix. A ValueError, so bad input stays one kind."""
