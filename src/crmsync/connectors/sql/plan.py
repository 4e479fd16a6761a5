"""Planning a write: creates, updates and deletes grouped into batch statements.

Rows with the same field set share one statement; statements are built once
per object and field set. Column names never become bind names (``p0``,
``pk``...), and values travel only as bind parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from crmsync.connectors.base import WriteResult
from crmsync.connectors.sql.core import CHUNK
from crmsync.connectors.sql.reflect import SqlObject


@dataclass(slots=True)
class WriteUnit:
    """One batch statement of a write and how to report its rows."""

    kind: str  # "create", "upsert", "update", "delete"
    stmt: Any
    # Statement parameters; for creates built on first need from ``rows``.
    params: list[dict[str, Any]] | None
    tags: list[str]  # error key per row ("create:<i>" or the id)
    indices: list[int] = field(default_factory=list)  # create positions
    ids: list[str] = field(default_factory=list)  # ids as given (upsert)
    # Creates: the caller's rows, the columns written, the updated_at stamp.
    rows: list[Mapping[str, Any]] = field(default_factory=list)
    names: tuple[str, ...] = ()
    stamp: datetime | None = None

    def get_params(self) -> list[dict[str, Any]]:
        if self.params is None:
            names = self.names[:-1] if self.stamp is not None else self.names
            self.params = [{n: r[n] for n in names} for r in self.rows]
            if self.stamp is not None:
                ts = self.names[-1]
                for p in self.params:
                    p[ts] = self.stamp
        return self.params


def plan_writes(
    o: SqlObject,
    dialect: str,
    creates: Sequence[Mapping[str, Any]],
    updates: Sequence[tuple[str, Mapping[str, Any]]],
    deletes: Sequence[str],
    result: WriteResult,
) -> list[WriteUnit]:
    """Group the writes into batch statements (same field set per statement).

    Rows that cannot be written at all (unknown fields, an id that cannot be a
    key) get their error in ``result`` here and no unit.
    """
    table, key = o.table, o.key_col.name
    ts = o.ts_col.name if o.ts_col is not None else None
    now = datetime.now(UTC).replace(tzinfo=None)
    cols = table.c
    units: list[WriteUnit] = []

    def unknown(names: Any) -> str | None:
        bad = [n for n in names if n not in cols]
        return f"unknown field(s): {', '.join(map(repr, bad))}" if bad else None

    # Group by field set first (validation then costs once per group, not per row).
    groups: dict[frozenset[str], list[int]] = {}
    for i, values in enumerate(creates):
        groups.setdefault(frozenset(values), []).append(i)
    for fset, idxs in groups.items():
        err = unknown(fset)
        if err:
            for i in idxs:
                result.errors[f"create:{i}"] = err
            continue
        stamp = now if ts is not None and ts not in fset else None
        names = tuple(sorted(fset)) + ((ts,) if stamp is not None else ())
        parts: list[tuple[str, list[int]]] = [("create", idxs)]
        if key in fset:
            given = [i for i in idxs if creates[i][key] is not None]
            parts = [
                ("upsert", given),
                ("create", [i for i in idxs if creates[i][key] is None]),
            ]
        for kind, kidxs in parts:
            # A NULL key means "generate one": the key column is left out.
            unames = names if kind == "upsert" else tuple(n for n in names if n != key)
            for s in range(0, len(kidxs), CHUNK):
                part = kidxs[s : s + CHUNK]
                u = WriteUnit(
                    kind,
                    upsert_stmt(o, dialect, frozenset(unames))
                    if kind == "upsert"
                    else o.stmt("create", lambda: create_stmt(o, dialect)),
                    None,
                    [f"create:{i}" for i in part],
                    part,
                    [str(creates[i][key]) for i in part] if kind == "upsert" else [],
                    rows=[creates[i] for i in part],
                    names=unames,
                    stamp=stamp,
                )
                units.append(u)

    ugroups: dict[frozenset[str], list[tuple[str, Any, Mapping[str, Any]]]] = {}
    for rid, values in updates:
        if ts is not None and ts not in values:
            values = {**values, ts: now}
        err = unknown(values)
        if err:
            result.errors[rid] = err
            continue
        try:
            pk = o.key_conv(rid)
        except (TypeError, ValueError):
            result.errors[rid] = "record not found"
            continue
        ugroups.setdefault(frozenset(values), []).append((rid, pk, values))
    for names, items in ugroups.items():
        order = sorted(n for n in names if n != key) or [key]
        stmt = o.stmt(("update", tuple(order)), lambda order=order: update_stmt(o, order))
        for s in range(0, len(items), CHUNK):
            part_items = items[s : s + CHUNK]
            params = [
                {"pk": pk, **{f"p{j}": v[n] for j, n in enumerate(order)}}
                for _rid, pk, v in part_items
            ]
            ids = [rid for rid, _pk, _v in part_items]
            units.append(WriteUnit("update", stmt, params, ids, ids=ids, names=tuple(order)))

    if deletes:
        stmt = o.stmt("delete", lambda: table.delete().where(o.key_col == sa.bindparam("pk")))
        dparams, dtags = [], []
        for rid in deletes:
            try:
                dparams.append({"pk": o.key_conv(rid)})
                dtags.append(rid)
            except (TypeError, ValueError):
                continue  # cannot exist: already gone
        for s in range(0, len(dparams), CHUNK):
            units.append(WriteUnit("delete", stmt, dparams[s : s + CHUNK], dtags[s : s + CHUNK]))
    return units


def create_stmt(o: SqlObject, dialect: str) -> Any:
    if dialect == "sqlite":
        # SQLAlchemy cannot prove SQLite's RETURNING order and would insert row
        # by row; multi-row VALUES plus sorting the new ids is exact (see SqlWrite._run).
        return o.table.insert().returning(o.key_col)
    return o.table.insert().returning(o.key_col, sort_by_parameter_order=True)


def update_stmt(o: SqlObject, order: list[str]) -> Any:
    cols = o.table.c
    # Generic bind names: column names never become parameter names.
    return (
        o.table.update()
        .where(o.key_col == sa.bindparam("pk"))
        .values({cols[n]: sa.bindparam(f"p{j}", type_=cols[n].type) for j, n in enumerate(order)})
    )


def upsert_stmt(o: SqlObject, dialect: str, names: frozenset[str]) -> Any:
    def build() -> Any:
        # Each dialect imported where used: a SQLite-only config never loads the
        # others (~24 ms CPU of every CLI start).
        if dialect == "sqlite":
            from sqlalchemy.dialects import sqlite

            return on_conflict(o, sqlite.insert(o.table), names)
        if dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            return on_conflict(o, postgresql.insert(o.table), names)
        if dialect in ("mysql", "mariadb"):
            from sqlalchemy.dialects import mysql

            key = o.key_col.name
            ins = mysql.insert(o.table)
            upd = sorted(n for n in names if n != key) or [key]
            return ins.on_duplicate_key_update({o.table.c[n]: ins.inserted[n] for n in upd})
        return o.table.insert()  # unknown dialect: a retried create fails as duplicate

    return o.stmt(("upsert", names), build)


def on_conflict(o: SqlObject, ins: Any, names: frozenset[str]) -> Any:
    """INSERT ... ON CONFLICT (key) DO UPDATE: a retried create is idempotent."""
    others = sorted(n for n in names if n != o.key_col.name)
    if not others:
        return ins.on_conflict_do_nothing(index_elements=[o.key_col])
    return ins.on_conflict_do_update(
        index_elements=[o.key_col],
        set_={o.table.c[n]: ins.excluded[n] for n in others},
    )
