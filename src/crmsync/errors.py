"""One exception tree. Each error says what the engine does next.

``user_message`` is safe to show (no secrets, no internals); ``hint`` names
the command to run when a person must act.
"""

from __future__ import annotations


class CrmsyncError(Exception):
    """Base of every error crmsync raises on purpose."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.user_message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return self.user_message if not self.hint else f"{self.user_message} ({self.hint})"


class ConfigError(CrmsyncError):
    """The configuration is invalid: abort before anything runs.

    ``problems`` holds every problem found, each ``(location, message)`` where
    location is ``file:line key.path``.
    """

    hint = "fix the file, then run: crmsync check"

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = [f"{loc}: {msg}" for loc, msg in problems]
        super().__init__("\n".join(lines) if lines else "invalid configuration")


class SystemUnavailable(CrmsyncError):
    """A system cannot be reached (refused, timeout): wait and retry, spend no attempt."""


class RecordError(CrmsyncError):
    """One record cannot be written (constraint, bad value): record it as failed, go on."""


class StateError(CrmsyncError):
    """The state database is unusable (wrong schema version, unreachable): abort."""

    hint = "check the `state:` URL in the config"


class SchemaError(CrmsyncError):
    """The live system does not have what the config names (table, column).

    ``key`` is the config key the problem belongs to, relative to the object
    (``table``, ``key``, ``updated_at``, ``deleted.field``), so ``check`` can
    report the full key path.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
