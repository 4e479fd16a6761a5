"""Driver errors translated into crmsync errors at the boundary.

A server that cannot be used right now is ``SystemUnavailable`` (the run waits
and retries); a server that answers but refuses the URL's credentials or
database is a ``SettingError`` naming the ``url`` key (a person must fix the
config); anything else (a row the database refuses) stays the driver's error
for the write path to pin on its row. Messages never carry the URL or password.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa

from crmsync.errors import SettingError, SystemUnavailable, refused_connect

# MySQL/MariaDB error numbers that mean "the server cannot be used right now"
# (too many connections, shutdown in progress, lock wait timeout, deadlock);
# every client-side error (2000-2999: refused, gone away, lost) counts too.
_MYSQL_TRANSIENT = {1040, 1053, 1205, 1213}
# SQLite "operational" errors that are about reaching the file, not the data.
_SQLITE_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o")


def first_line(exc: BaseException) -> str:
    """``Kind: first line`` of the driver's message (the rest may hold internals)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0] if text else ''}".rstrip(": ")


@dataclass(frozen=True, slots=True)
class DriverErrors:
    """How one system's driver errors read as crmsync errors."""

    system: str
    dialect: str
    # Where config problems are reported: ``file:line systems.NAME.url``.
    url_key: str
    # Kept only to scrub it from driver messages (some echo connection strings).
    secret: str | None

    def is_unavailable(self, exc: BaseException) -> bool:
        if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, (sa.exc.InterfaceError, sa.exc.DisconnectionError)):
            return True
        if isinstance(exc, sa.exc.TimeoutError):  # pool checkout timeout
            return True
        if not isinstance(exc, sa.exc.OperationalError):
            return False
        if self.dialect == "sqlite":
            text = str(exc.orig).lower()
            return any(t in text for t in _SQLITE_TRANSIENT)
        if self.dialect in ("mysql", "mariadb"):
            args = getattr(exc.orig, "args", ())
            code = args[0] if args and isinstance(args[0], int) else 0
            # Client errors are 2000-2999; MariaDB's own server errors go past
            # 4000 (4025: a CHECK constraint failed) and are about the data.
            return 2000 <= code < 3000 or code in _MYSQL_TRANSIENT
        # PostgreSQL (psycopg): data problems are DataError/IntegrityError;
        # OperationalError is connection, resources, shutdown, cancel.
        return True

    def refused_setting(self, exc: BaseException) -> SettingError | None:
        """The server answered but refuses these credentials or this database: a
        config problem naming the ``url`` key, not an outage."""
        if not isinstance(exc, sa.exc.DatabaseError):
            return None
        why = refused_connect(self.dialect, exc.orig)
        if why is None:
            return None
        detail = self._scrub(first_line(exc))
        return SettingError(self.url_key, f"system {self.system!r}: {why} ({detail})")

    def unavailable(self, exc: BaseException) -> SystemUnavailable:
        setting = self.refused_setting(exc)
        if setting is not None:
            return setting
        reason = self._scrub(first_line(exc))
        return SystemUnavailable(f"system {self.system!r} is unreachable: {reason}")

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Turn connection-level failures into SystemUnavailable (SettingError when
        the server refuses the URL's credentials or database)."""
        try:
            yield
        except (sa.exc.DBAPIError, sa.exc.DisconnectionError, sa.exc.TimeoutError) as exc:
            if self.is_unavailable(exc) or self.refused_setting(exc) is not None:
                raise self.unavailable(exc) from None
            raise

    def _scrub(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text
