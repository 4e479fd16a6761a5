"""Shadows are stored without their keys (``crmsync_shapes``), on SQLite and PostgreSQL state."""

from __future__ import annotations

import json
import sqlite3
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dbs import fresh_database

from crmsync.state import schema as S
from crmsync.state.store import StateStore, dumps

T0 = datetime(2026, 1, 1)
STATE = [pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgresql)]


@pytest.mark.parametrize("backend", STATE)
def test_shadows_round_trip_with_their_keys_stored_once(backend: str, tmp_path: Path) -> None:
    with fresh_database(backend, tmp_path, "state") as url:
        st = StateStore(url)
        try:
            st.migrate()
            a = {"name": "Ada", "city": None, "n": 3, "~rejected": {"n": "too big"}}
            b = {"name": "Bo", "city": "Oslo", "n": 4, "~rejected": {}}
            c2 = {"city": "Graz", "name": "Cy"}  # other keys, other order: another shape
            with st.begin() as c:
                st.save_identities(c, "l", [
                    {"source_id": "1", "target_id": "T1", "shadow": a},
                    {"source_id": "2", "target_id": "T2", "shadow": b},
                    {"source_id": "3", "target_id": "T3", "shadow": c2},
                    {"source_id": "4", "target_id": "T4", "shadow": {}},
                    {"source_id": "5", "target_id": "T5", "shadow": '{"name":"Old"}'},
                ])
            with st.connect() as c:
                got = st.identities_by_source(c, "l", ["1", "2", "3", "4", "5"])
                stored = dict(c.execute(sa.select(S.identities.c.source_id,
                                                  S.identities.c.shadow)).all())
                shapes = c.execute(sa.select(sa.func.count()).select_from(S.shapes)).scalar()
            assert {k: v.shadow for k, v in got.items()} == {
                "1": a, "2": b, "3": c2, "4": {}, "5": {"name": "Old"}}
            assert list(got["3"].shadow) == ["city", "name"]  # key order kept
            assert shapes == 2
            assert json.loads(stored["2"])[1:] == ["Bo", "Oslo", 4, {}]  # no keys repeated
            assert stored["5"] == '{"name":"Old"}'  # stored as given (before v6: objects)
        finally:
            st.close()



@pytest.mark.parametrize("backend", STATE)
def test_saving_pairs_again_keeps_changes_and_first_values(backend: str, tmp_path: Path) -> None:
    """Saved again, a pair takes its new target id (or none), shadow and versions; a
    pair crmsync created keeps its first values once its shadow changes."""
    with fresh_database(backend, tmp_path, "state") as url:
        st = StateStore(url)
        try:
            st.migrate()
            with st.begin() as c:
                st.save_identities(c, "l", [
                    {"source_id": "1", "target_id": "T1", "shadow": {"n": 1}, "first_shadow": ""},
                    {"source_id": "2", "target_id": "T2", "shadow": {"n": 2}},
                    {"source_id": "3", "target_id": "T3", "shadow": {"n": 3}},
                ])
            with st.begin() as c:
                st.save_identities(c, "l", [
                    {"source_id": "1", "target_id": "T1", "shadow": {"n": 10},
                     "source_version": "v2"},
                    # 3's old target goes to 2 in the same batch: 3 gives it up first
                    {"source_id": "3", "target_id": None, "shadow": {"n": 30}, "deleted": True},
                    {"source_id": "2", "target_id": "T3", "shadow": {"n": 20}},
                    {"source_id": "4", "target_id": "T2", "shadow": {"n": 4}, "first_shadow": ""},
                ])
            with st.connect() as c:
                got = st.identities_by_source(c, "l", ["1", "2", "3", "4"])
                first = dict(c.execute(sa.select(S.identities.c.source_id,
                                                 S.identities.c.first_shadow)).all())
                by_target = st.identities_by_target(c, "l", ["T1", "T2", "T3"])
            assert {k: (v.target_id, v.shadow) for k, v in got.items()} == {
                "1": ("T1", {"n": 10}), "2": ("T3", {"n": 20}), "3": (None, {"n": 30}),
                "4": ("T2", {"n": 4})}
            assert got["1"].source_version == "v2" and got["3"].deleted
            assert {k: v.source_id for k, v in by_target.items()} == {
                "T1": "1", "T2": "4", "T3": "2"}
            assert st.decode_shadow(c, first["1"]) == {"n": 1}  # created values kept
            assert first["4"] == "" and first["2"] is None
        finally:
            st.close()


def test_saving_a_pair_with_its_target_unchanged_leaves_the_target_index(tmp_path: Path) -> None:
    """SQLite: an update of shadows writes no page of the target-id index (it would
    otherwise rewrite one random page of it per pair: half an incremental batch's
    state writes on a large link)."""
    db = tmp_path / "state.db"
    st = StateStore(f"sqlite:///{db}")
    try:
        st.migrate()
        rows = [{"source_id": f"{i:06d}", "target_id": f"T{(i * 7919) % 20000:06d}",
                 "shadow": {"n": i}} for i in range(20000)]
        with st.begin() as c:
            st.save_identities(c, "l", rows)
        with st.engine.connect() as c:
            c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

        def index_pages() -> dict[int, bytes]:
            with st.engine.connect() as c:
                c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                root = c.exec_driver_sql(
                    "SELECT rootpage FROM sqlite_master WHERE name = 'crmsync_identities_target'"
                ).scalar()
            # The index's pages as stored: read back from the file after a checkpoint.
            with sqlite3.connect(db) as raw:
                size = raw.execute("PRAGMA page_size").fetchone()[0]
            data = db.read_bytes()
            pages: dict[int, bytes] = {}
            todo = [root]
            while todo:
                n = todo.pop()
                page = data[(n - 1) * size : n * size]
                pages[n] = page
                off = 100 if n == 1 else 0
                if page[off] == 0x02:  # interior index page: follow its children
                    count = int.from_bytes(page[off + 3 : off + 5], "big")
                    todo.append(int.from_bytes(page[off + 8 : off + 12], "big"))
                    for k in range(count):
                        ptr = int.from_bytes(page[off + 12 + 2 * k : off + 14 + 2 * k], "big")
                        todo.append(int.from_bytes(page[ptr : ptr + 4], "big"))
            return pages

        before = index_pages()
        with st.begin() as c:
            st.save_identities(c, "l", [{**r, "shadow": {"n": -1}} for r in rows[::7]])
        after = index_pages()
        assert [n for n in before if after.get(n) != before[n]] == []  # no page rewritten
        with st.connect() as c:
            assert st.identities_by_source(c, "l", ["000007"])["000007"].shadow == {"n": -1}
    finally:
        st.close()

def test_a_checksum_taken_by_other_keys_keeps_the_keys_in_the_row(tmp_path: Path) -> None:
    st = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        st.migrate()
        shadow = {"name": "Ada", "email": "a@x"}
        sid = zlib.crc32(dumps(tuple(shadow)).encode())
        with st.begin() as c:
            c.execute(sa.insert(S.shapes).values(id=sid, names='["other"]'))
            st.save_identities(c, "l", [{"source_id": "1", "target_id": "T1", "shadow": shadow}])
        with st.connect() as c:
            assert st.identities_by_source(c, "l", ["1"])["1"].shadow == shadow
            text = c.execute(sa.select(S.identities.c.shadow)).scalar()
        assert json.loads(text) == shadow
    finally:
        st.close()


def test_key_lookups_of_pairs_use_an_index(tmp_path: Path) -> None:
    """Pairs (and erasures, a run's logged refs, trigger memory) are found by key
    through an index, never a scan, whether asked by source or by target id; the
    plans SQLite chose for the key lookups (one bound list) are checked."""
    st = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        st.migrate()
        with st.begin() as c:
            for link in ("a", "b"):
                st.save_identities(c, link, [
                    {"source_id": f"S{n}", "target_id": f"T{n}", "shadow": {"name": f"n{n}"},
                     "first_shadow": ""} for n in range(300)
                ])
            st.add_outcomes(c, [
                {"run_id": 1, "link": "a", "source_ref": f"erp.customer:S{n}",
                 "target_ref": f"crm.company:T{n}", "action": "created", "status": "ok",
                 "fields": '{"created":null}', "message": None, "at": st.ts(T0)}
                for n in range(300)
            ])
        seen: list[tuple[str, Any]] = []
        sa.event.listen(st.engine, "before_cursor_execute",
                        lambda _c, _cur, stmt, params, _ctx, _many: seen.append((stmt, params)))
        with st.connect() as c:
            assert set(st.identities_by_target(c, "a", ["T1", "T2"])) == {"T1", "T2"}
            assert set(st.identities_by_source(c, "a", ["S1", "S2"])) == {"S1", "S2"}
            assert st.identity_pairs(c, "a", target_ids=["T3"]) == [("S3", "T3")]
            assert st.record_known(c, "crm.company:T4", [("a", "target")])
            assert st.run_logged_refs(c, 1, ["erp.customer:S5"]) == {"erp.customer:S5"}
            assert st.trigger_seen(c, "a", ["S1"]) == {}
            assert st.erased_refs(c, ["erp.customer:S1"]) == set()
        assert [o["source_ref"] for o in st.outcomes(record="crm.company:T6")] == [
            "erp.customer:S6"]
        assert len(st.activities("crm.company:T7")) == 1
        plans = []
        with st.connect() as c:
            for stmt, params in seen:
                if stmt.lstrip().upper().startswith("SELECT") and "json_each" in stmt:
                    plan = [r[3] for r in c.exec_driver_sql("EXPLAIN QUERY PLAN " + stmt, params)]
                    plans.append((stmt, plan))
        assert plans
        for stmt, plan in plans:
            bad = [d for d in plan if d.startswith("SCAN crmsync_")
                   or d.endswith("PRIMARY KEY (link=?)")]
            assert not bad, (stmt, plan)
    finally:
        st.close()


@pytest.mark.parametrize("backend", STATE)
def test_a_note_is_rendered_from_its_outcome_when_delivered(backend: str, tmp_path: Path) -> None:
    """A target with its own timeline: the row holds the delivery, its text is the
    outcome's, rendered when the note is written and when the timeline is read."""
    with fresh_database(backend, tmp_path, "state") as url:
        st = StateStore(url)
        try:
            st.migrate()
            at = st.ts(T0)
            note = {"link": "l", "record_ref": "crm.company:T1", "at": T0, "kind": "created",
                    "text": "", "deliver": True, "mentions": " erp.customer:S1 ",
                    "outcome_id": None}
            with st.begin() as c:
                st.save_identities(c, "l", [{"source_id": "S1", "target_id": "T1",
                                             "shadow": {"name": "Ada"}, "first_shadow": ""}])
                st.add_outcomes(c, [
                    {"run_id": 1, "link": "l", "source_ref": "erp.customer:S1",
                     "target_ref": "crm.company:T1", "action": "created", "status": "ok",
                     "fields": '{"created":null}', "message": None, "at": at,
                     "timeline": note},
                ])
                st.add_activities(c, [note])
            assert note["outcome_id"] is not None
            with st.connect() as c:
                ((aid, ref, text),) = st.undelivered_activities(c, "l", "crm.company:", 10)
            assert ref == "crm.company:T1"
            assert text == ("Sync completed: record created (crmsync link l, from "
                            "erp.customer:S1)\nFields updated: name = Ada")
            with st.begin() as c:
                st.mark_activities_delivered(c, [(aid, "note-7")], T0)
            (entry,) = st.activities("erp.customer:S1")
            assert (entry["id"], entry["text"], entry["external_id"]) == (aid, text, "note-7")
            assert entry["delivered_at"] is not None
            with st.connect() as c:
                assert st.undelivered_activities(c, "l", "crm.company:", 10) == []
                assert st.delivered_activities_of(c, ["erp.customer:S1"]) == [
                    ("crm.company:T1", "note-7")]
        finally:
            st.close()
