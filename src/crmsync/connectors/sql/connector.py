"""``SqlConnector``: one database (SQLite, PostgreSQL, MariaDB/MySQL) via SQLAlchemy 2 Core.

Safety: table and column names come only from reflection and are quoted by
SQLAlchemy; values travel only as bind parameters; the engine hides bound
parameters in its errors and connection failures are reported without the URL.

Speed: statements are built once per object and reused (SQLAlchemy caches the
compiled form), rows become records with ``dict(zip(names, row))`` and type
conversion stays in SQLAlchemy's C result processors wherever possible.

The parts, one concept each: ``core`` (engine, sessions, rows to records),
``types`` and ``reflect`` (tables as object specs), ``errors`` (driver errors
as crmsync errors), ``capture`` (change pages and cursors), ``read``,
``plan`` (writes as batch statements), ``bulk`` (fast multi-row inserts) and
``write`` (running them, salvaging refused rows).
"""

from __future__ import annotations

from crmsync.connectors.base import Capabilities
from crmsync.connectors.sql.activity import SqlActivity
from crmsync.connectors.sql.capture import SqlCapture
from crmsync.connectors.sql.read import SqlRead
from crmsync.connectors.sql.write import SqlWrite


class SqlConnector(SqlCapture, SqlRead, SqlWrite, SqlActivity):
    """A relational database reached through a SQLAlchemy URL."""

    capabilities = Capabilities(batch_size=500, upsert=True, hard_delete=True)
