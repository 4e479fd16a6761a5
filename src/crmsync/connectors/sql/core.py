"""The SQL connector's core: the engine and its sessions, reflected objects, raw rows to records.

Everything the capture, read and write parts share; each of them is a mixin
on ``SqlCore`` and ``SqlConnector`` joins them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from itertools import repeat
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from crmsync.config.models import ObjectConfig
from crmsync.connectors.base import Connector
from crmsync.connectors.sql.errors import DriverErrors, first_line
from crmsync.connectors.sql.reflect import SqlObject, reflect
from crmsync.connectors.sql.types import lenient, lenient_loaders
from crmsync.errors import SettingError, UnknownRecordType
from crmsync.model import ObjectSpec, Record

# Rows per IN list / per multi-row statement: well under every backend's bind limit.
CHUNK = 500


class SqlCore(Connector):
    """A relational database reached through a SQLAlchemy URL (shared plumbing)."""

    def __init__(self, name: str, url: str, objects: dict[str, ObjectConfig]) -> None:
        super().__init__(name)
        self._objects = dict(objects)
        self._calls = 0
        self._thread = threading.local()
        self._cache: dict[str, SqlObject] = {}
        # Where config problems are reported: ``file:line systems.NAME.url``.
        self._url_key = f"systems.{name}.url"
        from crmsync.config.urls import sql_url_problem

        if (why := sql_url_problem(url)) is not None:
            raise SettingError(self._url_key, why)
        engine_url = sa.make_url(url)
        kwargs: dict[str, Any] = {"hide_parameters": True}
        if engine_url.get_backend_name() == "mysql":
            # Servers close idle connections after wait_timeout; recycle before that.
            kwargs["pool_recycle"] = 3600
        try:
            self._engine: Engine = sa.create_engine(engine_url, **kwargs)
        except (sa.exc.ArgumentError, ValueError, TypeError) as exc:
            # What the URL's options say that the dialect cannot take (never the URL).
            raise SettingError(
                self._url_key, f"cannot use this database URL: {first_line(exc)}"
            ) from None
        self._dialect = self._engine.dialect.name
        self._errors = DriverErrors(name, self._dialect, self._url_key, engine_url.password)
        sa.event.listen(self._engine, "before_cursor_execute", self._count)
        sa.event.listen(self._engine, "connect", self._on_connect)
        if self._dialect == "sqlite":
            sa.event.listen(self._engine, "do_connect", self._sqlite_must_exist)

    # -- plumbing --------------------------------------------------------
    def _count(self, *args: Any) -> None:
        self._calls += 1
        # runs in the thread that executes the statement
        self._thread.calls = getattr(self._thread, "calls", 0) + 1

    def _on_connect(self, dbapi_conn: Any, record: Any) -> None:
        # Naive datetimes mean UTC: make the session agree for timestamptz/TIMESTAMP.
        if self._dialect == "postgresql":
            cur = dbapi_conn.cursor()
            cur.execute("SET TIME ZONE 'UTC'")
            cur.close()
            dbapi_conn.commit()
            if self._engine.dialect.driver == "psycopg":
                lenient_loaders(dbapi_conn)
        elif self._dialect in ("mysql", "mariadb"):
            cur = dbapi_conn.cursor()
            cur.execute("SET time_zone = '+00:00'")
            cur.close()

    def _sqlite_must_exist(self, dialect: Any, rec: Any, cargs: Any, cparams: Any) -> None:
        # SQLite creates a missing file on connect: a mistyped path would become an
        # empty database (and "table not found"). A system's tables must exist, so
        # a missing file is a config problem, and nothing is created.
        db = cargs[0] if cargs else cparams.get("database")
        if not isinstance(db, str) or not db or db == ":memory:" or db.startswith("file:"):
            return
        if not Path(db).is_file():
            where = Path(db).resolve()
            raise SettingError(
                self._url_key,
                f"SQLite file {str(where)!r} does not exist (nothing was created; "
                "check the path: sqlite:///relative.db or sqlite:////absolute.db)",
            )

    def count_calls(self) -> int:
        return self._calls

    def thread_calls(self) -> int:
        return getattr(self._thread, "calls", 0)

    def close(self) -> None:
        self._engine.dispose()

    # -- description -----------------------------------------------------
    def objects(self) -> list[str]:
        return list(self._objects)

    def describe(self, obj: str) -> ObjectSpec:
        return self._obj(obj).spec

    def _obj(self, obj: str) -> SqlObject:
        o = self._cache.get(obj)
        if o is None:
            with self._errors.guard():
                o = self._reflect(obj)
            self._cache[obj] = o
        return o

    def _reflect(self, obj: str) -> SqlObject:
        cfg = self._objects.get(obj)
        if cfg is None:
            raise UnknownRecordType(f"system {self.name!r} has no object {obj!r}")
        return reflect(self._engine, self._dialect, obj, cfg)

    # -- rows ------------------------------------------------------------
    def _records(self, o: SqlObject, rows: Sequence[Any]) -> list[Record]:
        """Raw DBAPI rows to records, converting column by column.

        Per-column ``map`` with SQLAlchemy's own (C) result processors is several
        times faster than building a Row per row and converting value by value.
        """
        if not rows:
            return []
        cols: list[Any] = list(zip(*rows, strict=True))
        for i, proc in o.procs or ():
            try:
                cols[i] = list(map(proc, cols[i]))
            except Exception:  # some value the type cannot take: that one stays raw
                cols[i] = [lenient(proc, v) for v in cols[i]]
        values = map(dict, map(zip, repeat(o.names), zip(*cols, strict=True)))
        ids = map(str, cols[o.key_idx])
        if o.ts_idx is None:
            return list(map(Record, ids, values))
        return list(map(Record, ids, values, cols[o.ts_idx]))

    def _execute(
        self, conn: Connection, o: SqlObject, stmt: Any, params: Mapping[str, Any]
    ) -> list[Any]:
        res = conn.execute(stmt, params)
        cur = res.cursor
        rows = cur.fetchall()  # raw tuples; _records converts them
        if o.procs is None:
            # The driver's type codes decide some processors (PostgreSQL numerics).
            dialect = self._engine.dialect
            procs = []
            for i, (t, desc) in enumerate(zip(o.sel_types, cur.description, strict=False)):
                proc = t.dialect_impl(dialect).result_processor(dialect, desc[1])
                if proc is not None:
                    procs.append((i, proc))
            o.procs = procs
        res.close()
        return rows

    def _fetch(self, o: SqlObject, stmt: Any, params: Mapping[str, Any]) -> list[Any]:
        with self._errors.guard(), self._engine.connect() as conn:
            return self._execute(conn, o, stmt, params)
