"""Build a settings object or stop the process with a message naming the bad variables."""

from __future__ import annotations

import sys
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


class SettingsError(SystemExit):
    """Raised when the environment does not describe a valid configuration (exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        name = ".".join(str(p) for p in error["loc"]) or "<settings>"
        parts.append(f"{name}: {error['msg']}")
    return "; ".join(parts)


def load_settings(cls: type[S]) -> S:
    """Read `cls` from the environment; on failure print one line per variable and exit 2."""
    try:
        return cls()
    except ValidationError as exc:
        message = f"invalid configuration for {cls.__name__}: {describe_validation_error(exc)}"
        sys.stderr.write(message + "\n")
        raise SettingsError(message) from None
