"""The state schema is a tested artifact: upgrading a real version-1 database works."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from dbs import fresh_database

from crmsync.state import schema as S
from crmsync.state.store import StateStore

SNAP = Path(__file__).parent / "state_snapshots" / "v1_sqlite.sql"


def test_upgrade_from_v1_keeps_data_and_reaches_current(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with sqlite3.connect(db) as c:
        c.executescript(SNAP.read_text())
        c.execute(
            "INSERT INTO crmsync_messages (link, side, record_id, op, status, attempts,"
            " available_at, created_at, updated_at) VALUES ('l', 'source', '7', 'upsert',"
            " 'pending', 0, '2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000',"
            " '2026-01-01 00:00:00.000000')"
        )
    st = StateStore(f"sqlite:///{db}")
    try:
        assert st.version() == 1
        assert st.migrate() == S.SCHEMA_VERSION
        assert st.version() == S.SCHEMA_VERSION
        insp = sa.inspect(st.engine)
        for t in S.metadata.tables.values():
            cols = {c["name"] for c in insp.get_columns(t.name)}
            assert cols == {c.name for c in t.columns}, t.name
        with st.begin() as c:
            (m,) = st.claim(c, "l", 10)
        assert m.record_id == "7"
        assert st.migrate() == S.SCHEMA_VERSION  # idempotent
    finally:
        st.close()


@pytest.mark.postgresql
def test_fresh_schema_on_postgresql(tmp_path: Path) -> None:
    with fresh_database("postgresql", tmp_path, "state") as url:
        st = StateStore(url)
        try:
            assert st.migrate() == S.SCHEMA_VERSION
            assert st.migrate() == S.SCHEMA_VERSION
            insp = sa.inspect(st.engine)
            assert set(S.metadata.tables) <= set(insp.get_table_names())
        finally:
            st.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    st = StateStore(f"sqlite:///{tmp_path / 's.db'}")
    try:
        st.migrate()
        with st.begin() as c:
            c.execute(sa.update(S.meta).values(value=str(S.SCHEMA_VERSION + 1)))
        with pytest.raises(Exception, match="newer than this crmsync"):
            st.migrate()
    finally:
        st.close()
