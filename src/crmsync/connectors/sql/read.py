"""Reads on a SQL table: count, scan in key order, read by ids, find by a match field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from crmsync.connectors.sql.core import CHUNK, SqlCore
from crmsync.connectors.sql.reflect import SqlObject
from crmsync.connectors.sql.types import lenient
from crmsync.errors import SchemaError
from crmsync.model import Record


class SqlRead(SqlCore):
    """``count``, ``scan``, ``read`` and ``find`` of the SQL connector."""

    def count(self, obj: str) -> int | None:
        o = self._obj(obj)
        stmt = o.stmt("count", lambda: sa.select(sa.func.count()).select_from(o.table))
        # Not through _execute: that caches row processors for the object's
        # own column list, which a one-column count must not set.
        with self._errors.guard(), self._engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def scan(self, obj: str, after_id: str | None, limit: int) -> list[Record]:
        o = self._obj(obj)
        key_col = o.key_col
        if after_id is None:
            stmt = o.stmt(
                "scan0",
                lambda: o.plain_select.order_by(key_col).limit(sa.bindparam("n", type_=sa.Integer)),
            )
            rows = self._fetch(o, stmt, {"n": limit})
        else:
            stmt = o.stmt(
                "scan",
                lambda: (
                    o.plain_select.where(key_col > sa.bindparam("k"))
                    .order_by(key_col)
                    .limit(sa.bindparam("n", type_=sa.Integer))
                ),
            )
            rows = self._fetch(o, stmt, {"n": limit, "k": o.key_conv(after_id)})
        return self._records(o, rows)

    def read(self, obj: str, ids: Sequence[str]) -> dict[str, Record]:
        o = self._obj(obj)
        keys = self._keys(o, ids)
        if not keys:
            return {}
        return {r.id: r for r in self._records(o, self._in_query(o, o.key_col, keys))}

    def find(self, obj: str, field_name: str, values: Sequence[Any]) -> list[Record]:
        o = self._obj(obj)
        if field_name not in o.table.c:
            raise SchemaError(
                "match",
                f"column {field_name!r} not found in table {o.table.name!r}; "
                f"columns: {', '.join(o.names)}",
            )
        vals = [v for v in dict.fromkeys(values) if v is not None]
        if not vals:
            return []
        return self._records(o, self._in_query(o, o.table.c[field_name], vals))

    def distinct_values(self, obj: str, field_name: str, limit: int) -> list[Any] | None:
        o = self._obj(obj)
        if field_name not in o.table.c:
            return None
        col = o.table.c[field_name]
        stmt = (
            sa.select(col).distinct().where(col.is_not(None)).order_by(col).limit(limit)
        )
        dialect = self._engine.dialect
        with self._errors.guard(), self._engine.connect() as conn:
            res = conn.execute(stmt)
            raw = [row[0] for row in res.cursor.fetchall()]
            proc = col.type.dialect_impl(dialect).result_processor(
                dialect, res.cursor.description[0][1]
            )
            res.close()
        # A value the column's type cannot take stays as the database holds it.
        return raw if proc is None else [lenient(proc, v) for v in raw]

    def options(self, obj: str, field_name: str) -> list[tuple[str, str]] | None:
        o = self._obj(obj)
        if field_name not in o.table.c or not isinstance(o.table.c[field_name].type, sa.Enum):
            return None
        # Reflected again, not from the cached table: ALTER TYPE ... ADD VALUE (or a
        # MODIFY of a MariaDB ENUM) since the start shows at the next run.
        with self._errors.guard():
            cols = sa.inspect(self._engine).get_columns(o.table.name, schema=o.table.schema)
        for c in cols:
            if c["name"] == field_name and isinstance(c["type"], sa.Enum):
                return [(str(e), str(e)) for e in c["type"].enums]
        return None

    def _keys(self, o: SqlObject, ids: Sequence[str]) -> list[Any]:
        out = []
        for i in ids:
            try:
                out.append(o.key_conv(i))
            except (TypeError, ValueError):
                continue  # cannot exist: absent from the result
        return out

    def _in_query(
        self, o: SqlObject, col: sa.ColumnElement[Any], values: Sequence[Any]
    ) -> list[Any]:
        stmt = o.stmt(
            ("in", col.name),
            lambda: o.plain_select.where(col.in_(sa.bindparam("vals", expanding=True))),
        )
        rows: list[Any] = []
        with self._errors.guard(), self._engine.connect() as conn:
            for i in range(0, len(values), CHUNK):
                rows.extend(self._execute(conn, o, stmt, {"vals": list(values[i : i + CHUNK])}))
        return rows
