"""Coded errors shared by the library, the CLI and the server.

Every failure a user can cause carries a stable `code`, a human `message` and, where one
field is at fault, that `field`; the server sends `to_dict()` on the wire unchanged.
"""

from __future__ import annotations

import difflib

# Stable codes; the wire contract (protocol/PROTOCOL.md) lists the same ones.
INVALID_PARAM = "invalid_param"
EMPTY_PROMPT = "empty_prompt"
UNKNOWN_CONTEXT = "unknown_context"
PROFILE_ERROR = "profile_error"
MODEL_ERROR = "model_error"
CANCELLED = "cancelled"
ENGINE_ERROR = "engine_error"
ENGINE_DEAD = "engine_dead"


class TroubadourError(Exception):
    code = "error"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field

    def to_dict(self) -> dict:
        d = {"code": self.code, "message": self.message}
        if self.field is not None:
            d["field"] = self.field
        return d

    def __str__(self) -> str:
        where = f" [{self.field}]" if self.field else ""
        return f"{self.code}{where}: {self.message}"


class ValidationError(TroubadourError):
    code = INVALID_PARAM


class ProfileError(TroubadourError):
    """A profiles file problem; the message names file, context and field."""

    code = PROFILE_ERROR


class ModelLoadError(TroubadourError):
    code = MODEL_ERROR


class Cancelled(TroubadourError):
    code = CANCELLED

    def __init__(self, message: str = "generation cancelled"):
        super().__init__(message)


def did_you_mean(name, options) -> str:
    """The " (did you mean 'x'?)" hint for the option closest to a mistyped `name`, or an empty string."""
    close = difflib.get_close_matches(str(name), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class EngineFault(RuntimeError):
    """The model misbehaved on this batch (not the request's fault), e.g. non-finite values."""
