"""Writes on a SQL table: the batch in one transaction, and a bad row failing alone.

The whole batch first goes in one transaction. When the database refuses
some row, each statement runs alone and a failing one row by row; a refused
row is then probed field by field (always rolled back) and written without
the fields the database refuses (``WriteResult.refused``), unless nothing it
needs fits. A connection failure is never a row error: it aborts the write.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from crmsync.connectors.base import WriteResult
from crmsync.connectors.sql.bulk import pg_insert, sqlite_insert
from crmsync.connectors.sql.core import SqlCore
from crmsync.connectors.sql.errors import first_line
from crmsync.connectors.sql.plan import (
    WriteUnit,
    create_stmt,
    plan_writes,
    update_stmt,
    upsert_stmt,
)
from crmsync.connectors.sql.reflect import SqlObject


class SqlWrite(SqlCore):
    """``write`` of the SQL connector."""

    def write(
        self,
        obj: str,
        creates: Sequence[Mapping[str, Any]] = (),
        updates: Sequence[tuple[str, Mapping[str, Any]]] = (),
        deletes: Sequence[str] = (),
        *,
        keep: Collection[str] = (),
    ) -> WriteResult:
        o = self._obj(obj)
        result = WriteResult(created=[None] * len(creates))
        units = plan_writes(o, self._dialect, creates, updates, deletes, result)
        if not units:
            return result
        is_unavailable = self._errors.is_unavailable
        with self._errors.guard():
            try:
                # Fast path: the whole batch in one transaction.
                staged = WriteResult(created=list(result.created), errors={})
                with self._engine.begin() as conn:
                    for u in units:
                        self._run(conn, o, u, slice(None), staged)
                result.created = staged.created
                result.errors.update(staged.errors)
                return result
            except sa.exc.StatementError as exc:
                if is_unavailable(exc):
                    raise
            # Some row is bad: each statement alone, and a failing one row by row,
            # so one bad row fails alone and the rest is written.
            for u in units:
                try:
                    with self._engine.begin() as conn:
                        self._run(conn, o, u, slice(None), result)
                    continue
                except sa.exc.StatementError as exc:
                    if is_unavailable(exc):
                        raise
                for i in range(len(u.tags)):
                    try:
                        with self._engine.begin() as conn:
                            self._run(conn, o, u, slice(i, i + 1), result)
                    except sa.exc.StatementError as exc:
                        if is_unavailable(exc):
                            raise
                        self._salvage(o, u, i, first_line(exc), result, keep)
        return result

    def _run(
        self, conn: Connection, o: SqlObject, u: WriteUnit, part: slice, out: WriteResult
    ) -> None:
        if u.kind in ("create", "upsert"):
            new = None
            if part == slice(None):
                if self._dialect == "sqlite":
                    new = sqlite_insert(conn, o, u)
                elif self._dialect == "postgresql":
                    new = pg_insert(conn, o, u)
            if new is None:
                res = conn.execute(u.stmt, u.get_params()[part])
                if u.kind == "create":
                    new = [row[0] for row in res]
            if u.kind == "upsert":
                new = u.ids[part]
            elif self._dialect in ("sqlite", "postgresql"):
                # Keys are assigned ascending in insertion order (rowid, sequence)
                # and we insert in input order, so ascending keys are the input
                # order; RETURNING's own row order is not guaranteed by either.
                new.sort()
            for idx, key in zip(u.indices[part], new, strict=True):
                out.created[idx] = str(key)
            return
        params = (u.params or [])[part]
        if u.kind == "update":
            n = conn.execute(u.stmt, params).rowcount
            if n != len(params):
                self._missing(conn, o, u, part, out)
        else:  # delete: a missing row is already deleted
            conn.execute(u.stmt, params)

    def _missing(
        self, conn: Connection, o: SqlObject, u: WriteUnit, part: slice, out: WriteResult
    ) -> None:
        keys = [p["pk"] for p in u.params[part]]
        stmt = sa.select(o.key_col).where(o.key_col.in_(sa.bindparam("vals", expanding=True)))
        found = {str(k) for (k,) in conn.execute(stmt, {"vals": keys})}
        for rid, p in zip(u.ids[part], u.params[part], strict=True):
            if str(p["pk"]) not in found:
                out.errors[rid] = "record not found"

    # -- a row the database refused: find the field(s), write the rest ----
    def _salvage(
        self, o: SqlObject, u: WriteUnit, i: int, reason: str, result: WriteResult,
        keep: Collection[str] = (),
    ) -> None:
        """Probe each field of a refused row alone (rolled back), then write the row
        without the refused ones. The row fails only when nothing it needs fits."""
        tag = u.tags[i]
        if u.kind == "delete":
            result.errors[tag] = reason
            return
        ts = o.ts_col.name if o.ts_col is not None else None
        if u.kind == "update":
            params = (u.params or [])[i]
            values = {n: params[f"p{j}"] for j, n in enumerate(u.names)}
            needed = {n for n in values if n in (ts, o.key_col.name)}
        else:
            values = dict(u.get_params()[i])
            # A match key stays: without it a retried create would not find its row.
            needed = {n for n in values if n == ts or n in keep or self._required(o, n)}
        base = {n: v for n, v in values.items() if n in needed}
        if u.kind != "update" and self._probe(o, u, i, base) is not None:
            result.errors[tag] = reason  # not even the columns it cannot do without
            return
        refused: dict[str, str] = {}
        for n in values:
            if n in needed:
                continue
            why = self._probe(o, u, i, {**base, n: values[n]})
            if why is not None:
                refused[n] = why
        if not refused:
            result.errors[tag] = reason  # no field alone: the row as a whole
            return
        kept = {n: v for n, v in values.items() if n not in refused}
        if u.kind == "update" and set(kept) <= needed:
            # Every field it was to change was refused: the row stays as it was.
            result.refused[tag] = refused
            return
        try:
            with self._engine.begin() as conn:
                self._write_one(conn, o, u, i, kept, result)
        except sa.exc.StatementError as exc:
            if self._errors.is_unavailable(exc):
                raise
            result.errors[tag] = first_line(exc)
            return
        result.refused[tag] = refused

    def _required(self, o: SqlObject, name: str) -> bool:
        """A column an INSERT cannot leave out (NOT NULL, no default, not generated)."""
        c = o.table.c[name]
        if c is o.key_col:
            return True
        return not c.nullable and c.server_default is None and c.default is None

    def _probe(self, o: SqlObject, u: WriteUnit, i: int, values: dict[str, Any]) -> str | None:
        """Why the database refuses this part of row ``i`` (None: it takes it);
        always rolled back."""
        scratch = WriteResult(created=[None] * (max(u.indices, default=0) + 1))
        with self._engine.connect() as conn:
            trans = conn.begin()
            try:
                self._write_one(conn, o, u, i, values, scratch)
            except sa.exc.StatementError as exc:
                if self._errors.is_unavailable(exc):
                    raise
                return first_line(exc)
            finally:
                trans.rollback()
        return None

    def _write_one(
        self, conn: Connection, o: SqlObject, u: WriteUnit, i: int, values: dict[str, Any],
        out: WriteResult,
    ) -> None:
        """Row ``i`` of ``u`` with only ``values`` (its columns) written."""
        if u.kind == "update":
            order = sorted(values)
            stmt = o.stmt(("update", tuple(order)), lambda: update_stmt(o, order))
            pk = (u.params or [])[i]["pk"]
            params = {"pk": pk, **{f"p{j}": values[n] for j, n in enumerate(order)}}
            one = WriteUnit(
                "update", stmt, [params], [u.tags[i]], ids=[u.tags[i]], names=tuple(order)
            )
            self._run(conn, o, one, slice(None), out)
            return
        names = tuple(values)
        if u.kind == "upsert":
            stmt = upsert_stmt(o, self._dialect, frozenset(names))
        else:
            stmt = o.stmt("create", lambda: create_stmt(o, self._dialect))
        one = WriteUnit(
            u.kind, stmt, [dict(values)], [u.tags[i]], [u.indices[i]],
            u.ids[i : i + 1], rows=[values], names=names,
        )
        # One row through SQLAlchemy's own parameter handling (no fast path).
        res = conn.execute(one.stmt, one.params)
        new = u.ids[i : i + 1] if u.kind == "upsert" else [row[0] for row in res]
        for idx, key in zip(one.indices, new, strict=True):
            out.created[idx] = str(key)
