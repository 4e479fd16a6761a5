"""The state schema is a tested artifact: upgrading a database of every earlier version works."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dbs import fresh_database

from crmsync.state import schema as S
from crmsync.state.log import CREATED_FROM_PAIR
from crmsync.state.store import StateStore

SNAP = Path(__file__).parent / "state_snapshots" / "v1_sqlite.sql"



def _assert_upgraded(st: StateStore) -> None:
    """Upgrade ``st`` and check it then has the current version and every column."""
    assert st.migrate() == S.SCHEMA_VERSION
    assert st.version() == S.SCHEMA_VERSION
    insp = sa.inspect(st.engine)
    for t in S.metadata.tables.values():
        cols = {c["name"] for c in insp.get_columns(t.name)}
        assert cols == {c.name for c in t.columns}, t.name
        indexes = {i["name"] for i in insp.get_indexes(t.name)}
        assert {str(i.name) for i in t.indexes} <= indexes, t.name

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
        _assert_upgraded(st)
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



def test_a_reader_of_a_state_file_without_schema_sees_an_empty_state(tmp_path: Path) -> None:
    """A read-only command (status, log) that opens a state file another process has
    just created, its schema not committed yet, reads it as empty (as a missing
    file), not as an internal error for tables that are not there; writes nothing."""
    db = tmp_path / "state.db"
    sqlite3.connect(db).close()  # the file exists, no table yet
    st = StateStore(f"sqlite:///{db}", readonly=True)
    try:
        assert st.migrate() == S.SCHEMA_VERSION
        assert st.link_states() == {}
        with st.connect() as c:
            assert st.queue_counts_by_link(c) == {}
    finally:
        st.close()
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)

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


# -- every earlier version -----------------------------------------------------------
# Snapshots of a fresh database at each earlier version, frozen from that
# version's schema.py by state_snapshots/snapshot.py. The state runs on SQLite
# and PostgreSQL only (the store refuses MariaDB), so those are the two tested.

SNAPSHOTS = Path(__file__).parent / "state_snapshots"
EARLIER = range(1, S.SCHEMA_VERSION)
T0 = datetime(2026, 1, 1, 0, 0, 0, 123456)
T1 = T0 + timedelta(hours=1)
_MSG = {"link": "l", "side": "source", "available_at": T0, "created_at": T0, "updated_at": T0}

# What each version wrote, in the columns it had: every upgrade must keep it.
SEED: dict[int, dict[sa.Table, list[dict[str, Any]]]] = {
    1: {
        S.cursors: [
            {"link": "l", "side": "source", "kind": "incremental", "value": '{"at":"x"}',
             "updated_at": T0},
        ],
        S.messages: [
            {**_MSG, "record_id": "7", "op": "upsert", "version": "v7", "status": "pending",
             "attempts": 0, "last_error": None},
            {**_MSG, "record_id": "8", "op": "delete", "version": None, "status": "failed",
             "attempts": 5, "last_error": "write refused: boom"},
        ],
        S.identities: [
            {"link": "l", "source_id": "7", "target_id": "T7", "shadow": '{"name":"Ada"}',
             "source_version": "v6", "target_version": "t6", "deleted": False, "updated_at": T0},
            {"link": "l", "source_id": "9", "target_id": None, "shadow": "{}",
             "source_version": None, "target_version": None, "deleted": True, "updated_at": T0},
        ],
        S.runs: [
            {"link": "l", "kind": "sync", "status": "ok", "started_at": T0, "finished_at": T1,
             "counts": '{"created":1}', "error": None},
        ],
        S.outcomes: [
            {"run_id": 1, "link": "l", "source_ref": "crm.person:7", "target_ref": "erp.party:T7",
             "action": "created", "status": "ok", "fields": '[{"field":"name","status":"updated"}]',
             "message": None, "at": T0},
        ],
    },
    2: {
        S.messages: [
            {**_MSG, "record_id": "10", "op": "upsert", "version": None, "status": "running",
             "attempts": 1, "last_error": None, "claimed_by": "host:1", "lease_until": T0},
        ],
        S.tokens: [
            {"name": "ops", "role": "admin", "token_hash": "h" * 64, "created_at": T0,
             "revoked_at": None},
        ],
        S.audit: [
            {"at": T0, "actor": "ops", "action": "link.disable", "target": "l",
             "detail": '{"why":"x"}'},
        ],
        S.webhook_deliveries: [{"system": "hooks", "webhook_id": "d-1", "received_at": T0}],
        S.pushed_records: [
            {"system": "hooks", "object": "deal", "record_id": "D-1", "fields": '{"title":"Big"}',
             "deleted": False, "seq": 1, "updated_at": T0},
        ],
        S.link_state: [
            {"link": "l", "enabled": False, "changed_by": "ops", "changed_at": T0,
             "next_run_at": T1, "last_run_at": T0},
        ],
    },
    3: {S.quota_use: [{"system": "crm", "window_start": T0, "calls": 42}]},
    4: {S.trigger_seen: [{"link": "l", "source_id": "7", "seen": '{"stage":"won"}',
                          "updated_at": T0}]},
    # v5 stored every timeline entry's text; v6 renders new ones from outcomes.
    5: {
        S.activities: [
            {"link": "l", "record_ref": "erp.party:T7", "at": T0, "kind": "created",
             "text": "Sync completed: record created (stored)", "deliver": True,
             "delivered_at": T1, "external_id": "note-1", "mentions": " crm.person:7 "},
        ],
        S.erased: [{"record_ref": "crm.person:99", "erased_at": T0, "erased_by": "ops"}],
    },
}


def _seeded(version: int) -> dict[sa.Table, list[dict[str, Any]]]:
    out: dict[sa.Table, list[dict[str, Any]]] = {}
    for v in range(1, version + 1):
        for t, rows in SEED.get(v, {}).items():
            out.setdefault(t, []).extend(rows)
    return out


def _load_snapshot(url: str, version: int, backend: str) -> None:
    """A database as version ``version`` left it: its schema, and the rows it wrote."""
    sql = (SNAPSHOTS / f"v{version}_{backend}.sql").read_text()
    eng = sa.create_engine(url)
    try:
        with eng.begin() as c:
            for stmt in sql.split(";\n"):
                if stmt.strip():
                    c.exec_driver_sql(stmt)
            for t, rows in _seeded(version).items():
                for row in rows:  # only the columns this version had
                    c.execute(sa.insert(t).values(row))
    finally:
        eng.dispose()


def test_every_earlier_version_has_snapshots() -> None:
    for v in EARLIER:
        for backend in ("sqlite", "postgresql"):
            assert (SNAPSHOTS / f"v{v}_{backend}.sql").is_file(), (v, backend)


@pytest.mark.parametrize(
    "backend",
    [pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgresql)],
)
@pytest.mark.parametrize("version", EARLIER, ids=lambda v: f"v{v}")
def test_upgrade_keeps_data(backend: str, version: int, tmp_path: Path) -> None:
    with fresh_database(backend, tmp_path, "state") as url:
        _load_snapshot(url, version, backend)
        st = StateStore(url)
        try:
            assert st.version() == version
            _assert_upgraded(st)
            _check_rows_kept(st, version)
            _check_store_reads(st, version)
            assert st.migrate() == S.SCHEMA_VERSION  # idempotent
        finally:
            st.close()


def _check_rows_kept(st: StateStore, version: int) -> None:
    if st.dialect == "sqlite":  # v6: rebuilt as WITHOUT ROWID, rows kept (checked below)
        with st.connect() as c:
            for t in (S.identities, S.trigger_seen):
                sql = c.execute(sa.text("SELECT sql FROM sqlite_master WHERE name = :n"),
                                {"n": t.name}).scalar()
                assert "WITHOUT ROWID" in sql, t.name
            indexes = {r[0] for r in c.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'index'")}
            assert "crmsync_identities_target" in indexes
            assert not {n for n in indexes if n.endswith("_rowid")}
    with st.connect() as c:
        for t, rows in _seeded(version).items():
            names = sorted({k for r in rows for k in r})
            got = {tuple(r) for r in c.execute(sa.select(*(t.c[n] for n in names)))}
            want = {tuple(r.get(n) for n in names) for r in rows}
            assert got == want, t.name
        if version == 1:  # columns added by v2 start empty
            m = S.messages
            assert set(c.execute(sa.select(m.c.claimed_by, m.c.lease_until))) == {(None, None)}


def _check_store_reads(st: StateStore, version: int) -> None:
    """The upgraded rows are read and written as the current crmsync does."""
    with st.begin() as c:
        assert st.get_cursor(c, "l", "source", "incremental") == {"at": "x"}
        ids = st.identities_by_source(c, "l", ["7", "9"])
        assert ids["7"].shadow == {"name": "Ada"} and ids["7"].target_id == "T7"
        assert ids["9"].deleted is True
        if version >= 2:
            assert st.recover_running(c, now=T1) == 1  # its lease ended at T0
        (m,) = [x for x in st.claim(c, "l", 10, now=T1) if x.record_id == "7"]
        assert (m.op, m.version) == ("upsert", "v7")
        failed = [r["id"] for r in st.list_messages(status="failed")]
    with st.begin() as c:
        assert st.retry_message(c, failed[0], now=T1) == "retried"
    (run,) = st.runs("l")
    assert run["counts"] == {"created": 1}
    (out,) = st.outcomes(link="l")
    assert out["fields"] == [{"field": "name", "status": "updated"}]
    if version >= 2:
        assert st.token_by_hash("h" * 64) == {"name": "ops", "role": "admin"}
        assert st.audit_rows()[0]["detail"] == {"why": "x"}
        assert st.link_enabled_overrides() == {"l": False}
        with st.connect() as c:
            assert st.webhook_delivery_seen(c, "hooks", "d-1")
            assert st.pushed_get(c, "hooks", "deal", "D-1") == ('{"title":"Big"}', False, 1)
    with st.connect() as c:
        if version >= 3:
            assert st.quota_row(c, "crm") == (T0, 42)
        if version >= 4:
            assert st.trigger_seen(c, "l", ["7"]) == {"7": {"stage": "won"}}
    # What later versions added works on the upgraded database.
    with st.begin() as c:
        st.mark_erased(c, ["crm.person:7"], by="ops", now=T1)
        st.add_activities(c, [{"link": "l", "record_ref": "crm.person:7", "at": T1,
                               "kind": "sync", "text": "created", "deliver": False}])
        assert st.erased_refs(c, ["crm.person:7", "crm.person:8"]) == {"crm.person:7"}
    stored = ["Sync completed: record created (stored)"] if version >= 5 else []
    assert [a["text"] for a in st.activities("crm.person:7")] == ["created", *stored]
    assert st.start_run("l", "sync") == 2
    _check_timeline_after_upgrade(st, stored)


def _check_timeline_after_upgrade(st: StateStore, stored: list[str]) -> None:
    """Entries stored before the upgrade keep their text and are told once; outcomes
    logged after it are told from the outcome; a create's values stay the pair's."""
    assert [a["text"] for a in st.activities("erp.party:T7")] == stored
    at = st.ts(T1)
    with st.begin() as c:
        st.save_identities(c, "l", [{"source_id": "8", "target_id": "T8",
                                     "shadow": '{"name":"Bo"}', "first_shadow": ""}])
        st.add_outcomes(c, [
            {"run_id": 2, "link": "l", "source_ref": "crm.person:8", "target_ref": "erp.party:T8",
             "action": "created", "status": "ok", "fields": CREATED_FROM_PAIR, "message": None,
             "at": at},
            {"run_id": 2, "link": "l", "source_ref": "crm.person:7", "target_ref": "erp.party:T7",
             "action": "updated", "status": "ok", "message": None, "at": at,
             "fields": '[{"field":"name","status":"updated","side":"target","old":"Ada",'
                       '"new":"Ada L"}]'},
        ])
        st.save_identities(c, "l", [{"source_id": "8", "target_id": "T8",
                                     "shadow": '{"name":"Bob"}'}])
    texts = [a["text"] for a in st.activities("erp.party:T7")]
    assert len(texts) == 1 + len(stored) and "Fields updated: name = Ada L" in texts[0]
    (entry,) = st.activities("crm.person:8")
    assert "Fields updated: name = Bo" in entry["text"] and "Bob" not in entry["text"]
    (out,) = st.outcomes(record="erp.party:T8")
    assert out["fields"] == [{"field": "name", "status": "updated", "side": "target",
                              "old": None, "new": "Bo"}]
    if stored:
        with st.connect() as c:
            assert st.delivered_activities_of(c, ["crm.person:7"]) == [
                ("erp.party:T7", "note-1")]


@pytest.mark.parametrize("version", EARLIER, ids=lambda v: f"v{v}")
def test_dry_run_reads_an_earlier_version_without_upgrading(version: int, tmp_path: Path) -> None:
    """A read-only store (a dry run) on an older SQLite state leaves it at its version."""
    with fresh_database("sqlite", tmp_path, "state") as url:
        _load_snapshot(url, version, "sqlite")
        st = StateStore(url, readonly=True)
        try:
            assert st.migrate() == version
            with st.connect() as c:
                assert st.erased_refs(c, ["crm.person:7"]) == set()
                assert st.identities_by_source(c, "l", ["7"])["7"].target_id == "T7"
            assert st.link_enabled_overrides() == ({"l": False} if version >= 2 else {})
            # `crmsync log --record` reads an older timeline as it was stored
            if version >= 5:
                assert [a["kind"] for a in st.activities("erp.party:T7")] == ["created"]
            assert [o["action"] for o in st.outcomes(record="crm.person:7")] == ["created"]
        finally:
            st.close()
        again = StateStore(url)
        try:
            assert again.version() == version
        finally:
            again.close()
