"""A rule's activity in a SQL system, on every database: one row per event, the record's
key in its column's type, found again (not written twice) after an interrupted attempt,
and a clear refusal when the table or a column is not there."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from dbs import fresh_database

from crmsync.config.models import ActivitiesConfig, ObjectConfig
from crmsync.connectors.sql import SqlConnector
from crmsync.errors import SchemaError

DDL = {
    "sqlite": "CREATE TABLE activity (id INTEGER PRIMARY KEY AUTOINCREMENT, contact_id INTEGER,"
              " subject TEXT, body TEXT, created_at DATETIME)",
    "postgresql": "CREATE TABLE activity (id SERIAL PRIMARY KEY, contact_id INTEGER,"
                  " subject TEXT, body TEXT, created_at TIMESTAMP)",
    "mariadb": "CREATE TABLE activity (id INTEGER AUTO_INCREMENT PRIMARY KEY, contact_id INTEGER,"
               " subject VARCHAR(200), body TEXT, created_at DATETIME(6))",
}


def _conn(url: str, **cfg: str | None) -> SqlConnector:
    conn = SqlConnector("crm", url, {"contact": ObjectConfig(table="activity", key="id")})
    conn._activities = ActivitiesConfig.model_validate(
        {"table": "activity", "record": "contact_id", "subject": "subject", "body": "body",
         "at": "created_at", **cfg})
    return conn


def test_activity_rows(backend: str, tmp_path: Path) -> None:
    with fresh_database(backend, tmp_path, "crm") as url:
        e = sa.create_engine(url)
        with e.begin() as c:
            c.exec_driver_sql(DDL[backend])
        conn = _conn(url)
        at = datetime(2026, 12, 2, 10, 0, 0, 123000)
        first = conn.add_event_activity("contact", "7", "Closed", "by kim", at, probe=False)
        # An attempt that may have written already looks first: the same row comes back.
        again = conn.add_event_activity("contact", "7", "Closed", "by kim", at, probe=True)
        assert again == first
        # Another event on the same record is another row.
        conn.add_event_activity("contact", "7", "Closed", "by kim",
                                datetime(2026, 12, 2, 10, 5), probe=True)
        with e.connect() as c:
            rows = c.exec_driver_sql(
                "SELECT contact_id, subject, body FROM activity ORDER BY id").all()
        assert [tuple(r) for r in rows] == [(7, "Closed", "by kim")] * 2
        # Without body and at columns configured, only record and subject are written.
        bare = _conn(url, body=None, at=None)
        bare.add_event_activity("contact", "8", "Hi", "ignored", at, probe=False)
        with e.connect() as c:
            row = c.exec_driver_sql(
                "SELECT contact_id, subject, body, created_at FROM activity WHERE contact_id = 8"
            ).one()
        assert tuple(row) == (8, "Hi", None, None)
        # A column that is not there: a clear refusal naming it, nothing written.
        typo = _conn(url, subject="subjct")
        assert "no column 'subjct'" in (typo.activity_problem() or "")
        with pytest.raises(SchemaError, match="subjct"):
            typo.add_event_activity("contact", "9", "x", "", at, probe=False)
        missing = _conn(url, table="activities")
        assert "'activities' not found" in (missing.activity_problem() or "")
        for c_ in (conn, bare, typo, missing):
            c_.close()
        e.dispose()
