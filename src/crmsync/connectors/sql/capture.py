"""Change capture on a SQL table: pages of rows ordered by (updated_at, key).

The cursor is ``{"ts": text, "key": last key or None, "held": {...}}``:

- ``ts`` is the last row's stamp as text (on SQLite the raw column text, so the
  comparison is exact and uses the index); ``key`` breaks ties, so rows sharing
  a stamp across pages are each read once. ``key`` None means "at or after ts"
  (``start_cursor`` positions there).
- ``lookback`` re-reads from ``ts`` minus that many seconds (late commits).
- Only rows whose stamp the database orders like a time become the cursor; a
  stamp Python cannot read is reported (``unreadable``), never silently skipped.
- Rows whose stamp sorts after every time ('infinity', 'not a date') are
  reported once per stamp value, remembered in ``held`` (see ``_hold_after_time``).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from crmsync.connectors.base import ChangePage, Cursor
from crmsync.connectors.sql.core import SqlCore
from crmsync.connectors.sql.reflect import SqlObject
from crmsync.errors import SchemaError
from crmsync.model import Record

# Rows with a stamp after every time that one cursor remembers as reported.
_HELD_MAX = 1000


class SqlCapture(SqlCore):
    """``read_changes`` and ``start_cursor`` of the SQL connector."""

    def read_changes(
        self, obj: str, cursor: Cursor | None, limit: int, lookback: float = 0.0
    ) -> ChangePage:
        o = self._obj(obj)
        if o.ts_expr is None:
            raise SchemaError("updated_at", f"object {obj!r} has no updated_at column configured")
        ts, key_col = o.ts_expr, o.key_col
        # Only rows the database orders like a time may become the cursor.
        base = o.base_select if o.ts_valid is None else o.base_select.where(o.ts_valid)
        params: dict[str, Any] = {"n": limit}
        if lookback and cursor is not None and cursor.get("ts") is not None:
            try:
                self._shift_ts(o, str(cursor["ts"]), lookback)
            except ValueError:
                # The cursor sits on a row whose stamp Python cannot read: no
                # reaching back from there, resume strictly after it.
                lookback = 0.0
        if cursor is None or cursor.get("ts") is None:
            stmt = o.stmt(
                "changes0",
                lambda: (
                    base.where(ts.is_not(None))
                    .order_by(ts, key_col)
                    .limit(sa.bindparam("n", type_=sa.Integer))
                ),
            )
        elif cursor.get("key") is None or lookback:
            # "At or after ts": start_cursor positions, and lookback overlaps.
            params["ts"] = self._bind_ts(o, str(cursor["ts"]), lookback)
            stmt = o.stmt(
                "changes_ge",
                lambda: (
                    base.where(ts >= sa.bindparam("ts"))
                    .order_by(ts, key_col)
                    .limit(sa.bindparam("n", type_=sa.Integer))
                ),
            )
        else:
            params["ts"] = self._bind_ts(o, str(cursor["ts"]), 0.0)
            params["k"] = o.key_conv(cursor["key"])
            # Keyset in the index-friendly form (MariaDB plans row values badly).
            stmt = o.stmt(
                "changes_gt",
                lambda: (
                    base.where(
                        ts >= sa.bindparam("ts"),
                        sa.or_(ts > sa.bindparam("ts"), key_col > sa.bindparam("k")),
                    )
                    .order_by(ts, key_col)
                    .limit(sa.bindparam("n", type_=sa.Integer))
                ),
            )
        rows = self._fetch(o, stmt, params)
        if not rows:
            unreadable: dict[str, str] = {}
            return ChangePage(
                [], self._hold_after_time(o, cursor, cursor, unreadable), more=False,
                unreadable=unreadable,
            )
        records = self._records(o, rows)
        key = records[-1].values[o.key_col.name]
        new_cursor: Cursor = {
            # Rows here are ordered like time (ts_valid), so even one whose stamp
            # Python cannot read is a safe position: it moves past no good row.
            "ts": self._cursor_ts(o, rows[-1], records[-1]),
            # JSON keeps ints as ints; other keys travel as text.
            "key": key if o.key_is_int else str(key),
        }
        if cursor and cursor.get("held"):
            new_cursor["held"] = cursor["held"]  # until the last page looks again
        unreadable = {}
        for row, r in zip(rows, records, strict=True):
            why = self._unreadable_stamp(o, r.version)
            if why is not None:
                unreadable[r.id] = why
                if lookback and cursor and not self._after(o, row, r, cursor):
                    # Read again by the lookback overlap: it was reported when
                    # the cursor passed it (a good row there is applied quietly).
                    unreadable[r.id] = ""
        if unreadable:
            records = [r for r in records if r.id not in unreadable]
        unreadable = {k: v for k, v in unreadable.items() if v}
        more = len(rows) >= limit
        if not more:
            new_cursor = self._hold_after_time(o, new_cursor, cursor, unreadable)
        return ChangePage(records, new_cursor, more=more, unreadable=unreadable)

    def start_cursor(self, obj: str) -> Cursor | None:
        o = self._obj(obj)
        if o.ts_expr is None:
            return None
        ts_expr, valid = o.ts_expr, o.ts_valid
        stmt = o.stmt(
            "max_ts",
            lambda: sa.select(sa.func.max(ts_expr))
            .select_from(o.table)
            .where(valid if valid is not None else sa.true()),
        )
        with self._errors.guard(), self._engine.connect() as conn:
            value = conn.execute(stmt).scalar()
        if value is None:
            return None
        text = value if isinstance(value, str) else value.isoformat()
        if self._unreadable_stamp(o, value) is not None:
            # MariaDB's max can be a date Python cannot hold ('2020-02-30'): the
            # text still orders, so the cursor stays a position.
            text = str(value)
        return {"ts": text, "key": None}

    def _hold_after_time(
        self, o: SqlObject, pos: Cursor | None, before: Cursor | None, unreadable: dict[str, str]
    ) -> Cursor | None:
        """Report rows whose updated_at sorts after every time ('not a date' on SQLite,
        'infinity' on PostgreSQL): never a cursor, so without this their changes would
        vanish unseen. Each is reported once per stamp value: the cursor holds what was
        reported (``held``, at most ``_HELD_MAX`` rows), and a row fixed since drops out.

        Found from the cursor's position on (they sort after it), so the index on
        updated_at serves the query and a poll still costs what changed.
        """
        if o.ts_after is None or o.ts_text is None or pos is None or pos.get("ts") is None:
            return pos
        ts_expr, after, text, key_col = o.ts_expr, o.ts_after, o.ts_text, o.key_col
        assert ts_expr is not None
        stmt = o.stmt(
            "after_time",
            lambda: sa.select(key_col, text)
            .where(after, ts_expr >= sa.bindparam("ts"))
            .order_by(ts_expr, key_col)
            .limit(_HELD_MAX),
        )
        with self._errors.guard(), self._engine.connect() as conn:
            rows = conn.execute(stmt, {"ts": self._bind_ts(o, str(pos["ts"]), 0.0)}).all()
        held = {str(k): str(v) for k, v in rows}
        seen = (before or {}).get("held") or {}
        assert o.ts_col is not None
        for rid, raw in held.items():
            if seen.get(rid) != raw:
                unreadable[rid] = (
                    f"updated_at column {o.ts_col.name!r} holds {raw[:60]!r}, not a time: "
                    "it sorts after every time, so changes of this row are not captured; "
                    "fix the value (a full sync reads the row anyway)"
                )
        out = {k: v for k, v in pos.items() if k != "held"}
        if held:
            out["held"] = held
        return out

    def _after(self, o: SqlObject, row: Any, rec: Record, cursor: Cursor) -> bool:
        """Whether a row's position comes after ``cursor`` (as the query orders them).

        Stamps are compared as ISO-like text: an unreadable one has no other form.
        """
        ts = self._cursor_ts(o, row, rec).replace("T", " ")
        cts = str(cursor.get("ts")).replace("T", " ")
        if ts != cts:
            return ts > cts
        key, ckey = rec.values[o.key_col.name], cursor.get("key")
        if ckey is None:
            return True
        return bool(key > ckey) if o.key_is_int else str(key) > str(ckey)

    def _cursor_ts(self, o: SqlObject, row: Any, rec: Record) -> str:
        if o.raw_idx is not None:
            return str(row[o.raw_idx])
        ts = rec.version
        return ts.isoformat() if hasattr(ts, "isoformat") else str(ts)

    def _bind_ts(self, o: SqlObject, text: str, lookback: float) -> Any:
        """The cursor's timestamp as a bind value of the column's kind."""
        try:
            return self._shift_ts(o, text, lookback)
        except ValueError:
            # A cursor on a row whose stamp Python cannot read (MariaDB's
            # '2020-02-30', SQLite's '2020-04-31'): the database still orders
            # it, so the text itself is the position (no lookback from there).
            return text

    def _shift_ts(self, o: SqlObject, text: str, lookback: float) -> Any:
        if o.raw_idx is not None:
            if not lookback:
                return text
            # Earlier by ``lookback``, truncated to whole seconds in the table's
            # separator style: a prefix sorts before every value of that second.
            start = datetime.fromisoformat(text) - timedelta(seconds=lookback)
            return start.isoformat(sep=o.ts_sep, timespec="seconds")
        assert o.ts_col is not None
        t = o.ts_col.type
        if isinstance(t, sa.DateTime):
            value = datetime.fromisoformat(text)
            return value - timedelta(seconds=lookback) if lookback else value
        if isinstance(t, sa.Date):
            value_d = datetime.fromisoformat(text).date()
            return value_d - timedelta(seconds=lookback) if lookback else value_d
        if isinstance(t, sa.Integer):  # epoch or version counters
            return int(text) - int(lookback)
        return text

    def _unreadable_stamp(self, o: SqlObject, value: Any) -> str | None:
        """Why a row's updated_at cannot order its change (None: it can)."""
        if value is None:
            return None
        assert o.ts_col is not None
        t = o.ts_col.type
        if isinstance(t, sa.DateTime):
            ok, what = isinstance(value, datetime), "a date and time"
        elif isinstance(t, sa.Date):
            ok, what = isinstance(value, date), "a date"
        elif isinstance(t, sa.Integer):
            ok, what = isinstance(value, int), "a number"
        else:
            return None
        if ok:
            return None
        shown = repr(value) if isinstance(value, str) else repr(str(value))
        return (
            f"updated_at column {o.ts_col.name!r} holds {shown[:60]}, not {what}: "
            "the change cannot be ordered, so it is not captured; "
            "fix the value (a full sync reads the row anyway)"
        )
