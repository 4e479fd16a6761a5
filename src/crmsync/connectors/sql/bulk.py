"""Bulk fast paths for multi-row inserts and upserts (SQLite and PostgreSQL).

SQLAlchemy's per-row parameter handling costs more than the insert itself on
big batches. These paths convert values column by column and send one
statement; each returns None when a value needs SQLAlchemy's own handling,
and the caller then takes the ordinary path (which reports a bad row per row).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from itertools import chain
from operator import attrgetter, itemgetter, methodcaller
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from crmsync.connectors.sql.plan import WriteUnit, on_conflict
from crmsync.connectors.sql.reflect import SqlObject

_NONE = type(None)
# Types PostgreSQL takes as typed arrays from psycopg lists (fast multi-row insert).
_PG_ARRAY_OK = (sa.String, sa.Integer, sa.Numeric, sa.Boolean, sa.Date, sa.DateTime, sa.Uuid)


def sqlite_insert(conn: Connection, o: SqlObject, u: WriteUnit) -> list[Any] | None:
    """Multi-row INSERT with values converted column by column (SQLite only).

    SQLAlchemy's per-row parameter processing costs more than SQLite's insert
    itself; this converts each column once with C-level ``map``. Returns the
    new keys (creates) or None when some value needs SQLAlchemy's own handling.
    """
    rows, names, n = u.rows, u.names, len(u.rows)
    data = names[:-1] if u.stamp is not None else names
    if not n or n * len(names) > 30000:
        return None
    cols: list[Any]
    if len(data) == 1:
        cols = [[r[data[0]] for r in rows]]
    else:
        cols = list(zip(*map(itemgetter(*data), rows), strict=True))
    if u.stamp is not None:
        cols.append([u.stamp] * n)
    for j, name in enumerate(names):
        kind = o.bind_kinds.get(name)
        if kind is None:
            continue
        converted = _convert(
            kind, cols[j], o.ts_sep if o.ts_col is not None and name == o.ts_col.name else " "
        )
        if converted is None:
            return None
        cols[j] = converted
    plan = _fast_sql(conn.dialect, o, u.kind, names, n)
    if plan is None:
        return None
    sql, order = plan
    flat = tuple(chain.from_iterable(zip(*[cols[j] for j in order], strict=True)))
    res = conn.exec_driver_sql(sql, flat)
    if u.kind != "create":
        return []
    return list(map(itemgetter(0), res.cursor.fetchall()))


def pg_insert(conn: Connection, o: SqlObject, u: WriteUnit) -> list[Any] | None:
    """INSERT ... SELECT FROM unnest(arrays) ORDER BY ordinality (PostgreSQL).

    One array parameter per column instead of one placeholder per value:
    psycopg parses a statement with thousands of placeholders slowly.
    """
    rows, names, n = u.rows, u.names, len(u.rows)
    if not n or not all(isinstance(o.table.c[c].type, _PG_ARRAY_OK) for c in names):
        return None
    data = names[:-1] if u.stamp is not None else names
    params = {f"a{j}": [r[c] for r in rows] for j, c in enumerate(data)}
    if u.stamp is not None:
        params[f"a{len(data)}"] = [u.stamp] * n
    stmt = o.stmt(("pg", u.kind, names), lambda: _pg_stmt(o, u.kind, names))
    res = conn.execute(stmt, params)
    return [row[0] for row in res] if u.kind == "create" else []


def _pg_item_type(t: sa.types.TypeEngine[Any]) -> sa.types.TypeEngine[Any]:
    """Array element type without length/scale: an explicit cast to varchar(n)
    would silently truncate, while the column assignment rejects an over-long value."""
    if isinstance(t, sa.Enum):
        return t
    if isinstance(t, sa.String):
        return sa.String()
    if isinstance(t, sa.Numeric) and not isinstance(t, sa.Float):
        return sa.Numeric()
    return t


def _pg_stmt(o: SqlObject, kind: str, names: tuple[str, ...]) -> Any:
    from sqlalchemy.dialects import postgresql  # only for a PostgreSQL system

    table = o.table
    cols = [table.c[c] for c in names]
    arrays = [
        sa.bindparam(f"a{j}", type_=postgresql.ARRAY(_pg_item_type(c.type)))
        for j, c in enumerate(cols)
    ]
    labels = [f"c{j}" for j in range(len(cols))]
    tv = sa.func.unnest(*arrays).table_valued(*labels, with_ordinality="ord").render_derived(
        name="u"
    )
    sel = sa.select(*[tv.c[x] for x in labels]).order_by(tv.c.ord)
    if kind == "create":
        return table.insert().from_select(cols, sel).returning(o.key_col)
    return on_conflict(o, postgresql.insert(table).from_select(cols, sel), frozenset(names))


def _convert(kind: str, col: Sequence[Any], sep: str) -> list[Any] | Sequence[Any] | None:
    """One column's values as SQLite stores them (SQLAlchemy's bind formats).

    None when a value is not of the expected type: the caller then lets
    SQLAlchemy process the rows (and report a bad one per row).
    """
    types = set(map(type, col))
    types.discard(_NONE)
    f: Callable[[Any], Any]
    if kind == "datetime":
        if not types <= {datetime} or any(map(attrgetter("tzinfo"), filter(None, col))):
            return None
        f = methodcaller("isoformat", sep, "microseconds")
    elif kind == "date":
        if not types <= {date}:
            return None
        f = date.isoformat
    elif kind == "numeric":
        if not types <= {Decimal, int, float}:
            return None
        f = float
    elif kind == "boolean":
        # sqlite3 stores bool as 0/1 itself.
        return col if types <= {bool} else None
    else:
        return None
    if None in col:
        return [None if v is None else f(v) for v in col]
    return list(map(f, col))


def _fast_sql(
    dialect: sa.Dialect, o: SqlObject, kind: str, names: tuple[str, ...], n: int
) -> tuple[str, list[int]] | None:
    """The compiled multi-row SQL for ``n`` rows, and the column order it binds."""
    cache_key = ("fast", kind, names, n)
    if cache_key in o.stmts:
        return o.stmts[cache_key]  # type: ignore[no-any-return]
    table = o.table
    values = [
        {table.c[c]: sa.bindparam(f"r{r}_{j}") for j, c in enumerate(names)} for r in range(n)
    ]
    if kind == "create":
        stmt: Any = table.insert().values(values).returning(o.key_col)
    else:
        from sqlalchemy.dialects import sqlite

        stmt = on_conflict(o, sqlite.insert(table).values(values), frozenset(names))
    compiled = stmt.compile(dialect=dialect)
    # SQLAlchemy renders columns in table order: learn the permutation, and
    # check every row follows it, or the flat tuple would be misaligned.
    pos = list(compiled.positiontup or ())
    m = len(names)
    order = [int(p.partition("_")[2]) for p in pos[:m]]
    ok = pos == [f"r{r}_{j}" for r in range(n) for j in order]
    plan = (compiled.string, order) if ok else None
    o.stmts[cache_key] = plan
    return plan
