"""Erasing an id that exists nowhere is refused and marks nothing.

Marking it would stop a record created later with that id from ever being
synced. Real SQLite systems (and a push-only one), the real engine and CLI,
state on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from dbs import fresh_database
from scenario import Scenario, customers, now
from test_erase_links import OTTO, STATE, ZELDA, World
from typer.testing import CliRunner

from crmsync.cli import app
from crmsync.connectors import build_connectors
from crmsync.engine.erase import RecordNotFound, erase
from crmsync.model import RecordRef
from crmsync.state import schema as S
from crmsync.state.store import StateStore


@pytest.fixture(params=STATE)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    with fresh_database(request.param, tmp_path, "state") as state_url:
        w = World(tmp_path, state_url)
        try:
            w.erp_put("P1", ZELDA)
            w.erp_put("P2", OTTO)
            w.sync()
            w.push_signup("S1", {"email": ZELDA["email"], "note": "hi"})
            yield w
        finally:
            w.close()


def _erased(w: World) -> list[str]:
    st = w.state()
    try:
        with st.connect() as c:
            return list(c.execute(sa.select(S.erased.c.record_ref)).scalars())
    finally:
        st.close()


def _audit(w: World) -> list[dict[str, object]]:
    st = w.state()
    try:
        return st.audit_rows(10)
    finally:
        st.close()


def _erase(w: World, ref: RecordRef) -> object:
    st = w.state()
    conns = build_connectors(w.config, st)
    try:
        return erase(w.config, st, conns, ref, "test")
    finally:
        st.close()
        for c in conns.values():
            c.close()


# one missing id per kind of object: a source, a target, a second-hop target, push-only
MISSING = [
    RecordRef("erp", "person", "P404"),
    RecordRef("crm", "contact", "999999"),
    RecordRef("mkt", "subscriber", "424242"),
    RecordRef("forms", "signup", "S404"),
]


@pytest.mark.parametrize("ref", MISSING, ids=str)
def test_missing_id_is_refused_and_nothing_is_marked(world: World, ref: RecordRef) -> None:
    with pytest.raises(RecordNotFound) as exc:
        _erase(world, ref)
    assert str(ref) in str(exc.value) and "nothing was erased or marked" in str(exc.value)
    assert _erased(world) == []
    top = _audit(world)[0]
    assert top["action"] == "record.erase" and top["target"] == str(ref)
    assert top["detail"] == {"status": "refused", "reason": "not found"}


def test_a_record_created_later_with_that_id_is_synced(world: World) -> None:
    r = world.cli("erase", "erp.person:P404", "--yes")
    assert r.exit_code == 2, r.output
    assert "erp.person:P404 does not exist" in r.output
    assert "Traceback" not in r.output
    assert _erased(world) == []
    world.erp_put("P404", {**OTTO, "name": "Born Later", "email": "later@example.org"})
    world.sync()
    assert world.crm_by_erp()["P404"]["full_name"] == "Born Later"


def test_refused_before_asking_for_confirmation(world: World) -> None:
    r = world.cli("erase", "forms.signup:S404", input="y\n")
    assert r.exit_code == 2, r.output
    assert "erase them?" not in r.output and "does not exist" in r.output
    assert _erased(world) == []


def test_unknown_object_stays_a_clear_error(world: World) -> None:
    r = world.cli("erase", "erp.nosuch:1", "--yes")
    assert r.exit_code == 2 and "system 'erp' has no object 'nosuch'" in r.output
    r = world.cli("erase", "nosys.person:1", "--yes")
    assert r.exit_code == 2 and "no system named 'nosys'" in r.output
    assert _erased(world) == []


def test_existing_records_are_still_erased(world: World) -> None:
    # In its system but never synced (no pairing): erased as before.
    world.erp_put("P3", {**OTTO, "name": "Unsynced"})
    report = _erase(world, RecordRef("erp", "person", "P3"))
    assert [(str(r.ref), r.result) for r in report.records] == [  # type: ignore[attr-defined]
        ("erp.person:P3", "anonymized")
    ]
    # Gone from its system but still paired in crmsync's state: erased (scrubbed).
    with world.erp.begin() as c:
        c.exec_driver_sql("DELETE FROM person WHERE id = 'P2'")
    report = _erase(world, RecordRef("erp", "person", "P2"))
    results = {str(r.ref): r.result for r in report.records}  # type: ignore[attr-defined]
    assert results["erp.person:P2"] == "not found" and len(results) == 3
    # A push-only record crmsync holds a copy of.
    r = world.cli("erase", "forms.signup:S1", "--yes")
    assert r.exit_code == 0, r.output
    assert {"erp.person:P3", "erp.person:P2", "forms.signup:S1"} <= set(_erased(world))
    # Erasing an erased record again is harmless, even once it is gone everywhere.
    with world.erp.begin() as c:
        c.exec_driver_sql("DELETE FROM person WHERE id = 'P3'")
    r = world.cli("erase", "erp.person:P3", "--yes")
    assert r.exit_code == 0, r.output


def test_refused_on_every_system_database(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ERP on SQLite, PostgreSQL and MariaDB: the existence check asks the system."""
    sc = Scenario(tmp_path, db_url, f"sqlite:///{tmp_path / 'crm.db'}",
                  monkeypatch=monkeypatch, batch=10)
    try:
        sc.seed(n=10, crm_existing=1)
        sc.sync()
        r = CliRunner().invoke(app, ["erase", "erp.customer:C07777", "--yes",
                                     "-c", str(sc.config_path)])
        assert r.exit_code == 2 and "erp.customer:C07777 does not exist" in r.output, r.output
        st = StateStore(sc.state_url)
        try:
            with st.connect() as c:
                assert list(c.execute(sa.select(S.erased.c.record_ref))) == []
        finally:
            st.close()
        with sc.erp.begin() as c:
            c.execute(customers.insert().values(
                customer_no="C07777", name="Born Later", status="A",
                contract_status="active", changed_at=now()))
        sc.sync()
        assert sc.crm_rows()["C07777"]["name"] == "Born Later"
        # an existing record is not "missing": no anonymize: is a config problem (exit 2)
        r = CliRunner().invoke(app, ["erase", "erp.customer:C00001", "--yes",
                                     "-c", str(sc.config_path)])
        assert r.exit_code == 2 and "nothing to erase" in r.output, r.output
    finally:
        sc.close()
