"""SQL types as crmsync field types, and the plain Python values we promise for them.

Drivers hand over what their database holds: MySQL booleans as 0/1, floats,
aware datetimes, PostgreSQL 'infinity'. The select list coerces these to the
plain type of the field (see ``reflect``), and a value Python cannot hold stays
raw so the engine rejects that one field, not the whole fetch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from crmsync.model import FieldType


class FloatAsDecimal(sa.types.TypeDecorator[Decimal]):
    """Floats are reported as DECIMAL fields, so their values are Decimal too."""

    impl = sa.Float
    cache_ok = True

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Decimal | None:
        # repr gives the shortest text that round-trips, so 0.1 stays Decimal("0.1").
        return None if value is None else Decimal(repr(float(value)))


class NaiveUTC(sa.types.TypeDecorator[datetime]):
    """timestamptz values as naive UTC (the session time zone is UTC too)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        # Not a datetime: 'infinity' handed over as text (see lenient_loaders).
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value


def lenient_loaders(dbapi_conn: Any) -> None:
    """psycopg loaders for dates and timestamps that hand over the text of a value
    Python cannot hold ('infinity', BC dates, years past 9999) instead of failing
    the whole fetch: the engine then rejects that one field."""
    from psycopg import DataError
    from psycopg.adapt import Loader
    from psycopg.pq import Format

    for name in ("date", "timestamp", "timestamptz"):
        oid = dbapi_conn.adapters.types[name].oid
        base = dbapi_conn.adapters.get_loader(oid, Format.TEXT)
        if base is None or getattr(base, "lenient", False):
            continue

        class _Lenient(Loader):
            lenient = True
            inner_type = base

            def __init__(self, oid: int, context: Any = None) -> None:
                super().__init__(oid, context)
                self._inner = self.inner_type(oid, context)

            def load(self, data: Any) -> Any:
                try:
                    return self._inner.load(data)
                except DataError:
                    return bytes(data).decode()

        dbapi_conn.adapters.register_loader(oid, _Lenient)


def lenient(proc: Callable[[Any], Any], value: Any) -> Any:
    """``proc(value)``, or the value as the database holds it when the type cannot take it."""
    try:
        return proc(value)
    except Exception:  # processors raise TypeError, ValueError, InvalidOperation...
        return value  # what the database holds; the engine's conversion judges it


def is_mysql_bool(t: sa.types.TypeEngine[Any]) -> bool:
    # MySQL has no boolean type: BOOLEAN is TINYINT(1), reflected as such. A TINYINT
    # exists only once the MySQL dialect is loaded: not imported for other systems.
    mysql = sys.modules.get("sqlalchemy.dialects.mysql")
    return (
        mysql is not None
        and isinstance(t, mysql.TINYINT)
        and getattr(t, "display_width", None) == 1
    )


def field_type(t: sa.types.TypeEngine[Any]) -> FieldType:
    # Order matters: Enum is a String, Float is a Numeric.
    if isinstance(t, sa.Enum):
        return FieldType.CHOICE
    if isinstance(t, sa.Boolean) or is_mysql_bool(t):
        return FieldType.BOOLEAN
    if isinstance(t, sa.Integer):
        return FieldType.INTEGER
    if isinstance(t, sa.Numeric):
        return FieldType.DECIMAL
    if isinstance(t, sa.DateTime):
        return FieldType.DATETIME
    if isinstance(t, sa.Date):
        return FieldType.DATE
    if isinstance(t, (sa.LargeBinary, sa.BINARY, sa.VARBINARY)):
        return FieldType.BINARY
    return FieldType.STRING


def required(c: sa.Column[Any]) -> bool:
    """NOT NULL without any default: an insert that leaves it out fails."""
    return (
        not c.nullable
        and c.server_default is None
        and c.default is None
        and c.computed is None
        and c.identity is None
    )
