"""SQL connector: one database (SQLite, PostgreSQL, MariaDB/MySQL) via SQLAlchemy 2 Core.

Safety: table and column names come only from reflection and are quoted by
SQLAlchemy; values travel only as bind parameters; the engine hides bound
parameters in its errors and connection failures are reported without the URL.

Speed: statements are built once per object and reused (SQLAlchemy caches the
compiled form), rows become records with ``dict(zip(names, row))`` and type
conversion stays in SQLAlchemy's C result processors wherever possible.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import chain, repeat
from operator import attrgetter, itemgetter, methodcaller
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from crmsync.config.models import ObjectConfig
from crmsync.connectors.base import Capabilities, ChangePage, Connector, Cursor, WriteResult
from crmsync.errors import SchemaError, SettingError, SystemUnavailable, refused_connect
from crmsync.model import FieldSpec, FieldType, ObjectSpec, Record

# Rows per IN list / per multi-row statement: well under every backend's bind limit.
CHUNK = 500

# MySQL/MariaDB error numbers that mean "the server cannot be used right now"
# (too many connections, shutdown in progress, lock wait timeout, deadlock);
# every client-side error (2000-2999: refused, gone away, lost) counts too.
_MYSQL_TRANSIENT = {1040, 1053, 1205, 1213}
# SQLite "operational" errors that are about reaching the file, not the data.
_SQLITE_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o")


class _FloatAsDecimal(sa.types.TypeDecorator[Decimal]):
    """Floats are reported as DECIMAL fields, so their values are Decimal too."""

    impl = sa.Float
    cache_ok = True

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Decimal | None:
        # repr gives the shortest text that round-trips, so 0.1 stays Decimal("0.1").
        return None if value is None else Decimal(repr(float(value)))


class _NaiveUTC(sa.types.TypeDecorator[datetime]):
    """timestamptz values as naive UTC (the session time zone is UTC too)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        # Not a datetime: 'infinity' handed over as text (see _lenient_loaders).
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value


def _lenient_loaders(dbapi_conn: Any) -> None:
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


def _lenient(proc: Callable[[Any], Any], value: Any) -> Any:
    try:
        return proc(value)
    except Exception:  # processors raise TypeError, ValueError, InvalidOperation...
        return value  # what the database holds; the engine's conversion judges it


def _is_mysql_bool(t: sa.types.TypeEngine[Any]) -> bool:
    # MySQL has no boolean type: BOOLEAN is TINYINT(1), reflected as such.
    return isinstance(t, mysql.TINYINT) and getattr(t, "display_width", None) == 1


def _field_type(t: sa.types.TypeEngine[Any]) -> FieldType:
    # Order matters: Enum is a String, Float is a Numeric.
    if isinstance(t, sa.Enum):
        return FieldType.CHOICE
    if isinstance(t, sa.Boolean) or _is_mysql_bool(t):
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


_NONE = type(None)
# Types PostgreSQL takes as typed arrays from psycopg lists (fast multi-row insert).
_PG_ARRAY_OK = (sa.String, sa.Integer, sa.Numeric, sa.Boolean, sa.Date, sa.DateTime, sa.Uuid)


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


def _required(c: sa.Column[Any]) -> bool:
    """NOT NULL without any default: an insert that leaves it out fails."""
    return (
        not c.nullable
        and c.server_default is None
        and c.default is None
        and c.computed is None
        and c.identity is None
    )


# Rows with a stamp after every time that one cursor remembers as reported.
_HELD_MAX = 1000


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0] if text else ''}".rstrip(": ")


@dataclass(slots=True)
class _Obj:
    """Everything reflected and prebuilt for one configured object."""

    spec: ObjectSpec
    table: sa.Table
    key_col: sa.Column[Any]
    ts_col: sa.Column[Any] | None
    names: list[str]
    key_idx: int
    ts_idx: int | None
    # Index of the raw (text) updated_at column appended on SQLite.
    raw_idx: int | None
    key_conv: Callable[[Any], Any]
    key_is_int: bool
    base_select: sa.Select[Any]
    # The same columns without the raw updated_at text (scan/read/find need no cursor).
    plain_select: sa.Select[Any]
    ts_expr: sa.ColumnElement[Any] | None
    # Rows whose updated_at the database orders like a time (None: all of them);
    # the others never become a cursor (see read_changes).
    ts_valid: sa.ColumnElement[bool] | None = None
    # Rows whose updated_at sorts after every time (SQLite text such as 'not a date',
    # PostgreSQL 'infinity'), and that stamp as text: reported by read_changes.
    ts_after: sa.ColumnElement[bool] | None = None
    ts_text: sa.ColumnElement[Any] | None = None
    # SQLite: 'T' when the table's timestamps use the ISO 'T' separator.
    ts_sep: str = " "
    # Result types of the select list, and (index, processor) once known.
    sel_types: list[sa.types.TypeEngine[Any]] = field(default_factory=list)
    procs: list[tuple[int, Callable[[Any], Any]]] | None = None
    # SQLite fast inserts: column -> how its values are converted ("" = not possible).
    bind_kinds: dict[str, str] = field(default_factory=dict)
    stmts: dict[Any, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Unit:
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


class SqlConnector(Connector):
    """A relational database reached through a SQLAlchemy URL."""

    capabilities = Capabilities(batch_size=500, upsert=True, hard_delete=True)

    def __init__(self, name: str, url: str, objects: dict[str, ObjectConfig]) -> None:
        super().__init__(name)
        self._objects = dict(objects)
        self._calls = 0
        self._thread = threading.local()
        self._cache: dict[str, _Obj] = {}
        # Where config problems are reported: ``file:line systems.NAME.url``.
        self._url_key = f"systems.{name}.url"
        from crmsync.config.loader import sql_url_problem

        if (why := sql_url_problem(url)) is not None:
            raise SettingError(self._url_key, why)
        engine_url = sa.make_url(url)
        # Kept only to scrub it from driver messages (some echo connection strings).
        self._secret = engine_url.password
        kwargs: dict[str, Any] = {"hide_parameters": True}
        if engine_url.get_backend_name() == "mysql":
            # Servers close idle connections after wait_timeout; recycle before that.
            kwargs["pool_recycle"] = 3600
        try:
            self._engine: Engine = sa.create_engine(engine_url, **kwargs)
        except (sa.exc.ArgumentError, ValueError, TypeError) as exc:
            # What the URL's options say that the dialect cannot take (never the URL).
            raise SettingError(
                self._url_key, f"cannot use this database URL: {_first_line(exc)}"
            ) from None
        self._dialect = self._engine.dialect.name
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
                _lenient_loaders(dbapi_conn)
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

    def _is_unavailable(self, exc: BaseException) -> bool:
        if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, (sa.exc.InterfaceError, sa.exc.DisconnectionError)):
            return True
        if isinstance(exc, sa.exc.TimeoutError):  # pool checkout timeout
            return True
        if not isinstance(exc, sa.exc.OperationalError):
            return False
        if self._dialect == "sqlite":
            text = str(exc.orig).lower()
            return any(t in text for t in _SQLITE_TRANSIENT)
        if self._dialect in ("mysql", "mariadb"):
            args = getattr(exc.orig, "args", ())
            code = args[0] if args and isinstance(args[0], int) else 0
            # Client errors are 2000-2999; MariaDB's own server errors go past
            # 4000 (4025: a CHECK constraint failed) and are about the data.
            return 2000 <= code < 3000 or code in _MYSQL_TRANSIENT
        # PostgreSQL (psycopg): data problems are DataError/IntegrityError;
        # OperationalError is connection, resources, shutdown, cancel.
        return True

    def _refused_setting(self, exc: BaseException) -> SettingError | None:
        """The server answered but refuses these credentials or this database: a
        config problem naming the ``url`` key, not an outage."""
        if not isinstance(exc, sa.exc.DatabaseError):
            return None
        why = refused_connect(self._dialect, exc.orig)
        if why is None:
            return None
        detail = _first_line(exc)
        if self._secret:
            detail = detail.replace(self._secret, "***")
        return SettingError(self._url_key, f"system {self.name!r}: {why} ({detail})")

    def _unavailable(self, exc: BaseException) -> SystemUnavailable:
        setting = self._refused_setting(exc)
        if setting is not None:
            return setting
        reason = _first_line(exc)
        if self._secret:
            reason = reason.replace(self._secret, "***")
        return SystemUnavailable(f"system {self.name!r} is unreachable: {reason}")

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn connection-level failures into SystemUnavailable (SettingError when
        the server refuses the URL's credentials or database)."""
        try:
            yield
        except (sa.exc.DBAPIError, sa.exc.DisconnectionError, sa.exc.TimeoutError) as exc:
            if self._is_unavailable(exc) or self._refused_setting(exc) is not None:
                raise self._unavailable(exc) from None
            raise

    # -- description -----------------------------------------------------
    def objects(self) -> list[str]:
        return list(self._objects)

    def describe(self, obj: str) -> ObjectSpec:
        return self._obj(obj).spec

    def _obj(self, obj: str) -> _Obj:
        o = self._cache.get(obj)
        if o is None:
            with self._guard():
                o = self._reflect(obj)
            self._cache[obj] = o
        return o

    def _reflect(self, obj: str) -> _Obj:
        cfg = self._objects.get(obj)
        if cfg is None:
            raise KeyError(f"object {obj!r} is not configured for system {self.name!r}")
        schema = cfg.schema_name
        try:
            table = sa.Table(cfg.table, sa.MetaData(), autoload_with=self._engine, schema=schema)
        except sa.exc.NoSuchTableError:
            insp = sa.inspect(self._engine)
            names = sorted(insp.get_table_names(schema=schema) + insp.get_view_names(schema=schema))
            where = f" in schema {schema!r}" if schema else ""
            raise SchemaError(
                "table",
                f"table {cfg.table!r} not found{where}; tables: {', '.join(names) or '(none)'}",
            ) from None
        cols = list(table.columns)
        colnames = [c.name for c in cols]

        def need(key: str, name: str) -> sa.Column[Any]:
            if name not in table.c:
                raise SchemaError(
                    key,
                    f"column {name!r} not found in table {cfg.table!r}; "
                    f"columns: {', '.join(colnames)}",
                )
            return table.c[name]

        key_col = need("key", cfg.key)
        ts_col = need("updated_at", cfg.updated_at) if cfg.updated_at else None
        if cfg.deleted is not None:
            need("deleted.field", cfg.deleted.field)

        key_generated = self._key_generated(table, key_col)
        default = key_col.server_default
        if (
            key_generated
            and self._dialect == "postgresql"
            and isinstance(default, sa.DefaultClause)
            and str(getattr(default.arg, "text", default.arg)).startswith("nextval(")
        ):
            # A reflected SERIAL looks like an opaque server default, so SQLAlchemy
            # would insert row by row to return keys in order. Seen as SERIAL (the
            # database still fills it), multi-row INSERT ... RETURNING keeps order.
            key_col.server_default = None
        fields: dict[str, FieldSpec] = {}
        for c in cols:
            t = c.type
            ft = _field_type(t)
            fields[c.name] = FieldSpec(
                name=c.name,
                type=ft,
                nullable=bool(c.nullable) and not c.primary_key,
                max_length=getattr(t, "length", None) if ft is FieldType.STRING else None,
                scale=getattr(t, "scale", None) if ft is FieldType.DECIMAL else None,
                choices=tuple(t.enums) if isinstance(t, sa.Enum) else None,
                read_only=key_generated and c is key_col,
                required=_required(c) and not (key_generated and c is key_col),
            )
        spec = ObjectSpec(
            name=obj,
            key=key_col.name,
            fields=fields,
            updated_at=ts_col.name if ts_col is not None else None,
            key_generated=key_generated,
        )

        # Select list: reflected columns, coerced where the driver's value is not
        # the plain Python type we promise (MySQL 0/1 booleans, floats, tz-aware).
        sel: list[sa.ColumnElement[Any]] = []
        for c in cols:
            t = c.type
            if _is_mysql_bool(t):
                sel.append(sa.type_coerce(c, sa.Boolean()))
            elif isinstance(t, sa.Float):
                sel.append(sa.type_coerce(c, _FloatAsDecimal()))
            elif isinstance(t, sa.DateTime) and t.timezone:
                sel.append(sa.type_coerce(c, _NaiveUTC()))
            else:
                sel.append(c)
        raw_idx = None
        ts_expr: sa.ColumnElement[Any] | None = ts_col
        ts_valid: sa.ColumnElement[bool] | None = None
        ts_after: sa.ColumnElement[bool] | None = None
        ts_text: sa.ColumnElement[Any] | None = None
        ts_sep = " "
        if (
            ts_col is not None
            and self._dialect == "postgresql"
            and isinstance(ts_col.type, (sa.DateTime, sa.Date))
        ):
            # 'infinity' sorts after every stamp and '-infinity'/BC before: a cursor
            # there would skip every later change, and Python holds neither.
            ts_valid = sa.and_(
                ts_col >= sa.cast(sa.literal("0001-01-01"), ts_col.type),
                ts_col < sa.cast(sa.literal("10000-01-01"), ts_col.type),
            )
            ts_after = ts_col >= sa.cast(sa.literal("10000-01-01"), ts_col.type)
            ts_text = sa.cast(ts_col, sa.Text())
        if (
            ts_col is not None
            and self._dialect == "sqlite"
            and isinstance(ts_col.type, (sa.DateTime, sa.Date))
        ):
            # SQLite keeps datetimes as text; the cursor compares raw text with raw
            # text (index-friendly, exact), whatever format the writer used.
            ts_expr = sa.type_coerce(ts_col, sa.String())
            raw_idx = len(sel)
            sel.append(ts_expr)
            # Only text SQLite reads as a time sorts like one ('31/12/1999' sorts
            # after every 2xxx stamp, 'not a date' after all): the rest never
            # becomes a cursor. A text that SQLite reads and Python does not
            # ('2026-02-30') still sorts in its place: reported, then passed.
            ts_valid = sa.and_(
                sa.func.typeof(ts_expr) == "text",
                sa.func.datetime(ts_expr).is_not(None),
            )
            # Text sorts after numbers: from a text cursor on, only text is found.
            ts_after, ts_text = sa.not_(ts_valid), ts_expr
            ts_sep = self._sqlite_ts_sep(table, ts_expr, ts_valid)
            if ts_sep == "T" and isinstance(ts_col.type, sa.DateTime):
                # Stamp in the table's own format so text order stays time order.
                ts_col.type = sqlite.DATETIME(
                    storage_format="%(year)04d-%(month)02d-%(day)02dT"
                    "%(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"
                )
        key_is_int = isinstance(key_col.type, sa.Integer)
        key_conv: Callable[[Any], Any] = str
        if key_is_int:
            key_conv = int
        elif isinstance(key_col.type, sa.Uuid) and key_col.type.as_uuid:
            key_conv = uuid.UUID
        return _Obj(
            spec=spec,
            table=table,
            key_col=key_col,
            ts_col=ts_col,
            names=colnames,
            key_idx=colnames.index(key_col.name),
            ts_idx=colnames.index(ts_col.name) if ts_col is not None else None,
            raw_idx=raw_idx,
            key_conv=key_conv,
            key_is_int=key_is_int,
            base_select=sa.select(*sel),
            plain_select=sa.select(*sel[: len(cols)]),
            ts_expr=ts_expr,
            ts_valid=ts_valid,
            ts_after=ts_after,
            ts_text=ts_text,
            ts_sep=ts_sep,
            sel_types=[e.type for e in sel],
            bind_kinds=self._bind_kinds(cols),
        )

    def _bind_kinds(self, cols: list[sa.Column[Any]]) -> dict[str, str]:
        """Columns whose values SQLAlchemy converts before binding (SQLite fast path)."""
        dialect = self._engine.dialect
        kinds: dict[str, str] = {}
        for c in cols:
            t = c.type
            if t.dialect_impl(dialect).bind_processor(dialect) is None:
                continue  # passed to the driver as is
            if isinstance(t, sa.DateTime):
                kinds[c.name] = "datetime"
            elif isinstance(t, sa.Date):
                kinds[c.name] = "date"
            elif isinstance(t, sa.Numeric):
                kinds[c.name] = "numeric"
            elif isinstance(t, sa.Boolean):
                kinds[c.name] = "boolean"
            else:
                kinds[c.name] = ""
        return kinds

    def _key_generated(self, table: sa.Table, key_col: sa.Column[Any]) -> bool:
        if not key_col.primary_key or not isinstance(key_col.type, sa.Integer):
            return False
        if len(table.primary_key.columns) != 1:
            return False
        if self._dialect == "sqlite":
            # Only "INTEGER PRIMARY KEY" aliases the rowid (BIGINT does not).
            return type(key_col.type) is sa.INTEGER
        return key_col.autoincrement is True

    def _sqlite_ts_sep(
        self, table: sa.Table, raw: sa.ColumnElement[Any], valid: sa.ColumnElement[bool]
    ) -> str:
        with self._engine.connect() as conn:
            q = sa.select(sa.func.max(raw)).select_from(table).where(valid)
            last = conn.execute(q).scalar()
        return "T" if isinstance(last, str) and last[10:11] == "T" else " "

    # -- reads -----------------------------------------------------------
    def _records(self, o: _Obj, rows: Sequence[Any]) -> list[Record]:
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
                cols[i] = [_lenient(proc, v) for v in cols[i]]
        values = map(dict, map(zip, repeat(o.names), zip(*cols, strict=True)))
        ids = map(str, cols[o.key_idx])
        if o.ts_idx is None:
            return list(map(Record, ids, values))
        return list(map(Record, ids, values, cols[o.ts_idx]))

    def _execute(
        self, conn: Connection, o: _Obj, stmt: Any, params: Mapping[str, Any]
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

    def _fetch(self, o: _Obj, stmt: Any, params: Mapping[str, Any]) -> list[Any]:
        with self._guard(), self._engine.connect() as conn:
            return self._execute(conn, o, stmt, params)

    def _stmt(self, o: _Obj, name: Hashable, build: Callable[[], Any]) -> Any:
        s = o.stmts.get(name)
        if s is None:
            s = o.stmts[name] = build()
        return s

    def _cursor_ts(self, o: _Obj, row: Any, rec: Record) -> str:
        if o.raw_idx is not None:
            return str(row[o.raw_idx])
        ts = rec.version
        return ts.isoformat() if hasattr(ts, "isoformat") else str(ts)

    def _bind_ts(self, o: _Obj, text: str, lookback: float) -> Any:
        """The cursor's timestamp as a bind value of the column's kind."""
        try:
            return self._shift_ts(o, text, lookback)
        except ValueError:
            # A cursor on a row whose stamp Python cannot read (MariaDB's
            # '2020-02-30', SQLite's '2020-04-31'): the database still orders
            # it, so the text itself is the position (no lookback from there).
            return text

    def _shift_ts(self, o: _Obj, text: str, lookback: float) -> Any:
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

    def _unreadable_stamp(self, o: _Obj, value: Any) -> str | None:
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
            stmt = self._stmt(
                o,
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
            stmt = self._stmt(
                o,
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
            stmt = self._stmt(
                o,
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

    def _hold_after_time(
        self, o: _Obj, pos: Cursor | None, before: Cursor | None, unreadable: dict[str, str]
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
        stmt = self._stmt(
            o,
            "after_time",
            lambda: sa.select(key_col, text)
            .where(after, ts_expr >= sa.bindparam("ts"))
            .order_by(ts_expr, key_col)
            .limit(_HELD_MAX),
        )
        with self._guard(), self._engine.connect() as conn:
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

    def _after(self, o: _Obj, row: Any, rec: Record, cursor: Cursor) -> bool:
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

    def start_cursor(self, obj: str) -> Cursor | None:
        o = self._obj(obj)
        if o.ts_expr is None:
            return None
        ts_expr, valid = o.ts_expr, o.ts_valid
        stmt = self._stmt(
            o,
            "max_ts",
            lambda: sa.select(sa.func.max(ts_expr))
            .select_from(o.table)
            .where(valid if valid is not None else sa.true()),
        )
        with self._guard(), self._engine.connect() as conn:
            value = conn.execute(stmt).scalar()
        if value is None:
            return None
        text = value if isinstance(value, str) else value.isoformat()
        if self._unreadable_stamp(o, value) is not None:
            # MariaDB's max can be a date Python cannot hold ('2020-02-30'): the
            # text still orders, so the cursor stays a position.
            text = str(value)
        return {"ts": text, "key": None}

    def count(self, obj: str) -> int | None:
        o = self._obj(obj)
        stmt = self._stmt(o, "count", lambda: sa.select(sa.func.count()).select_from(o.table))
        # Not through _execute: that caches row processors for the object's
        # own column list, which a one-column count must not set.
        with self._guard(), self._engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def scan(self, obj: str, after_id: str | None, limit: int) -> list[Record]:
        o = self._obj(obj)
        key_col = o.key_col
        if after_id is None:
            stmt = self._stmt(
                o,
                "scan0",
                lambda: o.plain_select.order_by(key_col).limit(sa.bindparam("n", type_=sa.Integer)),
            )
            rows = self._fetch(o, stmt, {"n": limit})
        else:
            stmt = self._stmt(
                o,
                "scan",
                lambda: (
                    o.plain_select.where(key_col > sa.bindparam("k"))
                    .order_by(key_col)
                    .limit(sa.bindparam("n", type_=sa.Integer))
                ),
            )
            rows = self._fetch(o, stmt, {"n": limit, "k": o.key_conv(after_id)})
        return self._records(o, rows)

    def _keys(self, o: _Obj, ids: Sequence[str]) -> list[Any]:
        out = []
        for i in ids:
            try:
                out.append(o.key_conv(i))
            except (TypeError, ValueError):
                continue  # cannot exist: absent from the result
        return out

    def _in_query(self, o: _Obj, col: sa.ColumnElement[Any], values: Sequence[Any]) -> list[Any]:
        stmt = self._stmt(
            o,
            ("in", col.name),
            lambda: o.plain_select.where(col.in_(sa.bindparam("vals", expanding=True))),
        )
        rows: list[Any] = []
        with self._guard(), self._engine.connect() as conn:
            for i in range(0, len(values), CHUNK):
                rows.extend(self._execute(conn, o, stmt, {"vals": list(values[i : i + CHUNK])}))
        return rows

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

    # -- writes ----------------------------------------------------------
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
        units = self._plan(o, creates, updates, deletes, result)
        if not units:
            return result
        with self._guard():
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
                if self._is_unavailable(exc):
                    raise
            # Some row is bad: each statement alone, and a failing one row by row,
            # so one bad row fails alone and the rest is written.
            for u in units:
                try:
                    with self._engine.begin() as conn:
                        self._run(conn, o, u, slice(None), result)
                    continue
                except sa.exc.StatementError as exc:
                    if self._is_unavailable(exc):
                        raise
                for i in range(len(u.tags)):
                    try:
                        with self._engine.begin() as conn:
                            self._run(conn, o, u, slice(i, i + 1), result)
                    except sa.exc.StatementError as exc:
                        if self._is_unavailable(exc):
                            raise
                        self._salvage(o, u, i, _first_line(exc), result, keep)
        return result

    # -- a row the database refused: find the field(s), write the rest ----
    def _salvage(
        self, o: _Obj, u: _Unit, i: int, reason: str, result: WriteResult,
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
        keep = {n: v for n, v in values.items() if n not in refused}
        if u.kind == "update" and set(keep) <= needed:
            # Every field it was to change was refused: the row stays as it was.
            result.refused[tag] = refused
            return
        try:
            with self._engine.begin() as conn:
                self._write_one(conn, o, u, i, keep, result)
        except sa.exc.StatementError as exc:
            if self._is_unavailable(exc):
                raise
            result.errors[tag] = _first_line(exc)
            return
        result.refused[tag] = refused

    def _required(self, o: _Obj, name: str) -> bool:
        """A column an INSERT cannot leave out (NOT NULL, no default, not generated)."""
        c = o.table.c[name]
        if c is o.key_col:
            return True
        return not c.nullable and c.server_default is None and c.default is None

    def _probe(self, o: _Obj, u: _Unit, i: int, values: dict[str, Any]) -> str | None:
        """Why the database refuses this part of row ``i`` (None: it takes it);
        always rolled back."""
        scratch = WriteResult(created=[None] * (max(u.indices, default=0) + 1))
        with self._engine.connect() as conn:
            trans = conn.begin()
            try:
                self._write_one(conn, o, u, i, values, scratch)
            except sa.exc.StatementError as exc:
                if self._is_unavailable(exc):
                    raise
                return _first_line(exc)
            finally:
                trans.rollback()
        return None

    def _write_one(
        self, conn: Connection, o: _Obj, u: _Unit, i: int, values: dict[str, Any],
        out: WriteResult,
    ) -> None:
        """Row ``i`` of ``u`` with only ``values`` (its columns) written."""
        if u.kind == "update":
            order = sorted(values)
            stmt = self._stmt(
                o, ("update", tuple(order)), lambda: self._update_stmt(o, order)
            )
            pk = (u.params or [])[i]["pk"]
            params = {"pk": pk, **{f"p{j}": values[n] for j, n in enumerate(order)}}
            one = _Unit("update", stmt, [params], [u.tags[i]], ids=[u.tags[i]], names=tuple(order))
            self._run(conn, o, one, slice(None), out)
            return
        names = tuple(values)
        if u.kind == "upsert":
            stmt = self._upsert_stmt(o, frozenset(names))
        else:
            stmt = self._stmt(o, "create", lambda: self._create_stmt(o))
        one = _Unit(
            u.kind, stmt, [dict(values)], [u.tags[i]], [u.indices[i]],
            u.ids[i : i + 1], rows=[values], names=names,
        )
        # One row through SQLAlchemy's own parameter handling (no fast path).
        res = conn.execute(one.stmt, one.params)
        new = u.ids[i : i + 1] if u.kind == "upsert" else [row[0] for row in res]
        for idx, key in zip(one.indices, new, strict=True):
            out.created[idx] = str(key)

    def _run(self, conn: Connection, o: _Obj, u: _Unit, part: slice, out: WriteResult) -> None:
        if u.kind in ("create", "upsert"):
            new = None
            if part == slice(None):
                if self._dialect == "sqlite":
                    new = self._sqlite_insert(conn, o, u)
                elif self._dialect == "postgresql":
                    new = self._pg_insert(conn, o, u)
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

    def _sqlite_insert(self, conn: Connection, o: _Obj, u: _Unit) -> list[Any] | None:
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
        plan = self._fast_sql(o, u.kind, names, n)
        if plan is None:
            return None
        sql, order = plan
        flat = tuple(chain.from_iterable(zip(*[cols[j] for j in order], strict=True)))
        res = conn.exec_driver_sql(sql, flat)
        if u.kind != "create":
            return []
        return list(map(itemgetter(0), res.cursor.fetchall()))

    def _pg_insert(self, conn: Connection, o: _Obj, u: _Unit) -> list[Any] | None:
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
        stmt = self._stmt(o, ("pg", u.kind, names), lambda: self._pg_stmt(o, u.kind, names))
        res = conn.execute(stmt, params)
        return [row[0] for row in res] if u.kind == "create" else []

    def _pg_stmt(self, o: _Obj, kind: str, names: tuple[str, ...]) -> Any:
        table = o.table
        cols = [table.c[c] for c in names]
        arrays = [
            sa.bindparam(f"a{j}", type_=postgresql.ARRAY(_pg_item_type(c.type)))
            for j, c in enumerate(cols)
        ]
        labels = [f"c{j}" for j in range(len(cols))]
        tv = (
            sa.func.unnest(*arrays)
            .table_valued(*labels, with_ordinality="ord")
            .render_derived(name="u")
        )
        sel = sa.select(*[tv.c[x] for x in labels]).order_by(tv.c.ord)
        if kind == "create":
            return table.insert().from_select(cols, sel).returning(o.key_col)
        return self._on_conflict(
            o, postgresql.insert(table).from_select(cols, sel), frozenset(names)
        )

    def _fast_sql(
        self, o: _Obj, kind: str, names: tuple[str, ...], n: int
    ) -> tuple[str, list[int]] | None:
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
            stmt = self._on_conflict(o, sqlite.insert(table).values(values), frozenset(names))
        compiled = stmt.compile(dialect=self._engine.dialect)
        # SQLAlchemy renders columns in table order: learn the permutation, and
        # check every row follows it, or the flat tuple would be misaligned.
        pos = list(compiled.positiontup or ())
        m = len(names)
        order = [int(p.partition("_")[2]) for p in pos[:m]]
        ok = pos == [f"r{r}_{j}" for r in range(n) for j in order]
        plan = (compiled.string, order) if ok else None
        o.stmts[cache_key] = plan
        return plan

    def _missing(self, conn: Connection, o: _Obj, u: _Unit, part: slice, out: WriteResult) -> None:
        keys = [p["pk"] for p in u.params[part]]
        stmt = sa.select(o.key_col).where(o.key_col.in_(sa.bindparam("vals", expanding=True)))
        found = {str(k) for (k,) in conn.execute(stmt, {"vals": keys})}
        for rid, p in zip(u.ids[part], u.params[part], strict=True):
            if str(p["pk"]) not in found:
                out.errors[rid] = "record not found"

    def _plan(
        self,
        o: _Obj,
        creates: Sequence[Mapping[str, Any]],
        updates: Sequence[tuple[str, Mapping[str, Any]]],
        deletes: Sequence[str],
        result: WriteResult,
    ) -> list[_Unit]:
        """Group the writes into batch statements (same field set per statement)."""
        table, key = o.table, o.key_col.name
        ts = o.ts_col.name if o.ts_col is not None else None
        now = datetime.now(UTC).replace(tzinfo=None)
        cols = table.c
        units: list[_Unit] = []

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
                    u = _Unit(
                        kind,
                        self._upsert_stmt(o, frozenset(unames))
                        if kind == "upsert"
                        else self._stmt(o, "create", lambda: self._create_stmt(o)),
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
            stmt = self._stmt(
                o, ("update", tuple(order)), lambda order=order: self._update_stmt(o, order)
            )
            for s in range(0, len(items), CHUNK):
                part_items = items[s : s + CHUNK]
                params = [
                    {"pk": pk, **{f"p{j}": v[n] for j, n in enumerate(order)}}
                    for _rid, pk, v in part_items
                ]
                ids = [rid for rid, _pk, _v in part_items]
                units.append(_Unit("update", stmt, params, ids, ids=ids, names=tuple(order)))

        if deletes:
            stmt = self._stmt(
                o, "delete", lambda: table.delete().where(o.key_col == sa.bindparam("pk"))
            )
            dparams, dtags = [], []
            for rid in deletes:
                try:
                    dparams.append({"pk": o.key_conv(rid)})
                    dtags.append(rid)
                except (TypeError, ValueError):
                    continue  # cannot exist: already gone
            for s in range(0, len(dparams), CHUNK):
                units.append(_Unit("delete", stmt, dparams[s : s + CHUNK], dtags[s : s + CHUNK]))
        return units

    def _create_stmt(self, o: _Obj) -> Any:
        if self._dialect == "sqlite":
            # SQLAlchemy cannot prove SQLite's RETURNING order and would insert row
            # by row; multi-row VALUES plus sorting the new ids is exact (see _run).
            return o.table.insert().returning(o.key_col)
        return o.table.insert().returning(o.key_col, sort_by_parameter_order=True)

    def _update_stmt(self, o: _Obj, order: list[str]) -> Any:
        cols = o.table.c
        # Generic bind names: column names never become parameter names.
        return (
            o.table.update()
            .where(o.key_col == sa.bindparam("pk"))
            .values(
                {cols[n]: sa.bindparam(f"p{j}", type_=cols[n].type) for j, n in enumerate(order)}
            )
        )

    def _upsert_stmt(self, o: _Obj, names: frozenset[str]) -> Any:
        def build() -> Any:
            if self._dialect == "sqlite":
                return self._on_conflict(o, sqlite.insert(o.table), names)
            if self._dialect == "postgresql":
                return self._on_conflict(o, postgresql.insert(o.table), names)
            if self._dialect in ("mysql", "mariadb"):
                key = o.key_col.name
                ins = mysql.insert(o.table)
                upd = sorted(n for n in names if n != key) or [key]
                return ins.on_duplicate_key_update({o.table.c[n]: ins.inserted[n] for n in upd})
            return o.table.insert()  # unknown dialect: a retried create fails as duplicate

        return self._stmt(o, ("upsert", names), build)

    def _on_conflict(self, o: _Obj, ins: Any, names: frozenset[str]) -> Any:
        """INSERT ... ON CONFLICT (key) DO UPDATE: a retried create is idempotent."""
        others = sorted(n for n in names if n != o.key_col.name)
        if not others:
            return ins.on_conflict_do_nothing(index_elements=[o.key_col])
        return ins.on_conflict_do_update(
            index_elements=[o.key_col],
            set_={o.table.c[n]: ins.excluded[n] for n in others},
        )
