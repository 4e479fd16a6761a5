"""One exception tree. Each error says what happens next, in its docstring:

- abort: nothing runs (``ConfigError``, ``SettingError`` before a run,
  ``SchemaError``, ``StateError``, ``UnknownLink``);
- wait and run again, no attempt spent (``SystemUnavailable``,
  ``StateUnavailable``; ``engine.quota.QuotaWait``);
- record the one record as failed and go on (a connector's per-record errors
  in ``WriteResult.errors``);
- a person acts (``engine.erase.EraseError`` and kin,
  ``UnknownRecordType``).

``user_message`` is safe to show (no secrets, no internals); ``hint`` names
the command to run when a person must act. ``str()`` is the message followed
by the hint, so a hint set on a class shows wherever that error is printed.
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


class SettingError(SystemUnavailable):
    """One setting of the config is wrong in a way only using it shows: a URL that
    cannot be parsed, a dialect or driver that is not installed, credentials or a
    database the server refuses, a SQLite file that does not exist.

    ``key`` is the config key path (``systems.erp.url``, ``state``), so the CLI can
    name ``file:line key``. Before anything runs (check, plan, sync, ...) it is a
    configuration problem (exit 2). It is a ``SystemUnavailable`` so that a worker
    already running when a password is rotated pauses the system's messages, as
    for an outage, instead of spending their attempts: nothing is lost, and fixing
    the config resumes them.
    """

    hint = "fix the file, then run: crmsync check"

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class StateError(CrmsyncError):
    """The state database is unusable (a newer schema version): abort."""

    hint = "check the `state:` URL in the config"


class StateUnavailable(StateError):
    """The state database cannot be reached: nothing ran, run again."""

    hint = "is the state database server up? Run the command again"


class UnknownLink(CrmsyncError):
    """A command or request names a link the config does not have: abort, nothing ran.

    ``user_message`` lists the links there are; every caller refuses with it
    (the CLI exits 2, the API answers 404).
    """

    hint = "the links are under `links:` in the config; see: crmsync status"

    def __init__(self, name: str, links: list[str]) -> None:
        super().__init__(f"no link named {name!r} (links: {', '.join(links)})")
        self.name = name


class SchemaError(CrmsyncError):
    """The live system does not have what the config names (table, column): the
    link stops, nothing is written; fix the config (see: crmsync check).

    ``key`` is the config key the problem belongs to, relative to the object
    (``table``, ``key``, ``updated_at``, ``deleted.field``), so ``check`` can
    report the full key path.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


# Exit codes of every CLI command (README "The CLI"): one table, one place.
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran but some records failed, or a system refused the work
EXIT_CONFIG = 2  # bad configuration or arguments (unknown link/status, record not found)
EXIT_UNREACHABLE = 3  # a system could not be reached: nothing lost, run again


# Errors at connect that mean the URL is wrong, not that the server is down.
_MYSQL_REFUSED = {
    1044: "the user may not use this database",
    1045: "access denied (wrong user or password)",
    1049: "the database does not exist",
    1251: "the server wants another authentication method",
    1698: "access denied (wrong user or password)",
}
# PostgreSQL refuses these at connect time; psycopg gives no SQLSTATE there.
_PG_REFUSED = (
    ("password authentication failed", "access denied (wrong user or password)"),
    ("no pg_hba.conf entry", "the server does not let this user in from here (pg_hba.conf)"),
    ("does not exist", "the database or user does not exist"),
)


def refused_connect(dialect: str, orig: BaseException | None) -> str | None:
    """Why the server refused a connection for a reason in the URL (user, password,
    database, a file that is no database), in plain words; None when it is anything
    else (down, refused, timeout).

    ``orig`` is the driver's exception (``DBAPIError.orig``).
    """
    if orig is None:
        return None
    if dialect in ("mysql", "mariadb"):
        args = getattr(orig, "args", ())
        code = args[0] if args and isinstance(args[0], int) else 0
        return _MYSQL_REFUSED.get(code)
    if dialect == "sqlite":
        # A file that is there but is something else (a typo naming another file).
        return "the file is not a SQLite database" if "not a database" in str(orig) else None
    if dialect == "postgresql":
        text = str(orig)
        if "FATAL:" in text:  # refused at connect, not a statement's error
            return next((w for t, w in _PG_REFUSED if t in text), None)
    return None


class UnknownRecordType(CrmsyncError):
    """The system or object of a ref is not in the config: nothing to look up; a
    person corrects the name (the message lists what exists)."""
