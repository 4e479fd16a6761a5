"""Reflection: one configured object's table, its field spec and its prebuilt selects.

Table and column names come only from here (SQLAlchemy quotes them); the
result, ``SqlObject``, is built once per object and holds every statement
later built for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Engine

from crmsync.config.models import ObjectConfig
from crmsync.connectors.sql.types import (
    FloatAsDecimal,
    NaiveUTC,
    field_type,
    is_mysql_bool,
    required,
)
from crmsync.errors import SchemaError
from crmsync.model import FieldSpec, FieldType, ObjectSpec


@dataclass(slots=True)
class SqlObject:
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

    def stmt(self, name: Hashable, build: Callable[[], Any]) -> Any:
        """The statement ``name``, built on first use (SQLAlchemy caches its compiled form)."""
        s = self.stmts.get(name)
        if s is None:
            s = self.stmts[name] = build()
        return s


def reflect(engine: Engine, dialect: str, obj: str, cfg: ObjectConfig) -> SqlObject:
    """Reflect ``cfg.table``; a missing table or column is a SchemaError naming its key."""
    schema = cfg.schema_name
    try:
        table = sa.Table(cfg.table, sa.MetaData(), autoload_with=engine, schema=schema)
    except sa.exc.NoSuchTableError:
        insp = sa.inspect(engine)
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

    key_generated = _key_generated(dialect, table, key_col)
    default = key_col.server_default
    if (
        key_generated
        and dialect == "postgresql"
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
        ft = field_type(t)
        fields[c.name] = FieldSpec(
            name=c.name,
            type=ft,
            nullable=bool(c.nullable) and not c.primary_key,
            max_length=getattr(t, "length", None) if ft is FieldType.STRING else None,
            scale=getattr(t, "scale", None) if ft is FieldType.DECIMAL else None,
            choices=tuple(t.enums) if isinstance(t, sa.Enum) else None,
            read_only=key_generated and c is key_col,
            required=required(c) and not (key_generated and c is key_col),
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
        if is_mysql_bool(t):
            sel.append(sa.type_coerce(c, sa.Boolean()))
        elif isinstance(t, sa.Float):
            sel.append(sa.type_coerce(c, FloatAsDecimal()))
        elif isinstance(t, sa.DateTime) and t.timezone:
            sel.append(sa.type_coerce(c, NaiveUTC()))
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
        and dialect == "postgresql"
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
        and dialect == "sqlite"
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
        ts_sep = _sqlite_ts_sep(engine, table, ts_expr, ts_valid)
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
    return SqlObject(
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
        bind_kinds=_bind_kinds(engine.dialect, cols),
    )


def _bind_kinds(dialect: sa.Dialect, cols: list[sa.Column[Any]]) -> dict[str, str]:
    """Columns whose values SQLAlchemy converts before binding (SQLite fast path)."""
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


def _key_generated(dialect: str, table: sa.Table, key_col: sa.Column[Any]) -> bool:
    if not key_col.primary_key or not isinstance(key_col.type, sa.Integer):
        return False
    if len(table.primary_key.columns) != 1:
        return False
    if dialect == "sqlite":
        # Only "INTEGER PRIMARY KEY" aliases the rowid (BIGINT does not).
        return type(key_col.type) is sa.INTEGER
    return key_col.autoincrement is True


def _sqlite_ts_sep(
    engine: Engine, table: sa.Table, raw: sa.ColumnElement[Any], valid: sa.ColumnElement[bool]
) -> str:
    with engine.connect() as conn:
        q = sa.select(sa.func.max(raw)).select_from(table).where(valid)
        last = conn.execute(q).scalar()
    return "T" if isinstance(last, str) and last[10:11] == "T" else " "
