"""Shadows are stored without their keys (``crmsync_shapes``), on SQLite and PostgreSQL state."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
import sqlalchemy as sa
from dbs import fresh_database

from crmsync.state import schema as S
from crmsync.state.store import StateStore, dumps

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
