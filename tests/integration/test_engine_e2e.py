"""End to end through the real engine on SQLite, PostgreSQL and MariaDB systems."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import pytest
from dbs import fresh_database
from scenario import Scenario, customers

ACTIVE = 48  # seed(120): i % 5 < 2
EXISTING = 20


@pytest.fixture
def sc(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    s = Scenario(tmp_path, db_url, db_url, monkeypatch=monkeypatch)
    s.seed()
    yield s
    s.close()


def test_migration_matches_creates_filters_and_rejects_fields(sc: Scenario) -> None:
    r = sc.sync()
    assert r.kind == "migration"
    assert r.counts["created"] == ACTIVE - EXISTING
    assert r.counts["matched"] == EXISTING
    crm = sc.crm_rows()
    erp = sc.erp_rows()
    active = {k for k, v in erp.items() if v["contract_status"] == "active"}
    assert set(crm) - {None} == active  # filter held; NULL-stamped rows migrated too
    assert "C00065" in active and erp["C00065"]["changed_at"] is None
    for k in active:
        assert crm[k]["name"] == erp[k]["name"]
        assert crm[k]["credit_limit"] == erp[k]["credit_limit"]
        assert crm[k]["status"] == {"A": "Active", "I": "Inactive"}[erp[k]["status"]]
    assert crm[None]["name"] == "Unrelated Ltd"
    # The unconvertible field is rejected with its reason; the rest applied.
    assert crm["C00010"]["employees"] is None
    assert crm["C00010"]["name"] == "Customer 10"
    (o,) = sc.outcomes(record=f"crm.company:{crm['C00010']['id']}")
    emp = next(f for f in o["fields"] if f["field"] == "employees")
    assert emp["status"] == "rejected" and "ten thousand" in emp["reason"]
    assert o["status"] == "rejected"
    # Email flows backward: the existing CRM value wins on first pairing.
    assert erp["C00000"]["email"] == crm["C00000"]["email"] == "old@crm.example"


def test_second_sync_writes_nothing_anywhere(sc: Scenario) -> None:
    sc.sync()
    crm, erp = sc.crm_snapshot(), sc.erp_snapshot()
    r = sc.sync()
    assert r.kind == "incremental"
    assert r.counts["created"] == r.counts["updated"] == r.counts["deleted"] == 0
    assert sc.crm_snapshot() == crm
    assert sc.erp_snapshot() == erp


def test_incremental_edits_both_ways_then_quiet(sc: Scenario) -> None:
    sc.sync()
    sc.erp_update("C00001", name="Renamed One", credit_limit=99)
    sc.erp_update("C00005", status="X")  # soft delete at the source
    sc.erp_update("C00003", contract_status="active")  # now passes the filter
    sc.crm_update("C00006", email="new@crm.example")  # backward field
    r = sc.sync()
    assert r.counts["updated"] == 2  # C00001 forward, C00006 backward
    assert r.counts["deleted"] == 1
    assert r.counts["created"] == 1
    crm, erp = sc.crm_rows(), sc.erp_rows()
    assert crm["C00001"]["name"] == "Renamed One"
    assert crm["C00001"]["credit_limit"] == 99
    assert crm["C00005"]["status"] == "Deleted"
    assert crm["C00003"]["name"] == "Customer 3"
    assert erp["C00006"]["email"] == "new@crm.example"
    # the echo of our own writes is recognised: nothing more to do
    snap = sc.crm_snapshot(), sc.erp_snapshot()
    r2 = sc.sync()
    assert r2.counts["updated"] == r2.counts["created"] == 0
    assert (sc.crm_snapshot(), sc.erp_snapshot()) == snap
    log = sc.outcomes(record="erp.customer:C00005")
    assert log[0]["action"] == "deleted"


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "absent"


def test_plan_writes_nothing_not_even_state(sc: Scenario) -> None:
    state = sc.tmp / "state.db"
    crm = sc.crm_snapshot()
    p = sc.plan()
    assert p.counts["created"] == ACTIVE - EXISTING
    assert p.counts["matched"] == EXISTING
    assert p.samples
    assert not state.exists()
    assert sc.crm_snapshot() == crm
    sc.sync()
    sc.erp_update("C00001", name="Planned")
    before = (_digest(state), sc.crm_snapshot(), sc.erp_snapshot())
    p = sc.plan()
    assert p.counts["updated"] == 1
    assert any(
        f.field == "name" and f.new == "Planned" for o in p.samples for f in o.fields
    )
    assert (_digest(state), sc.crm_snapshot(), sc.erp_snapshot()) == before


@pytest.mark.parametrize("policy", ["source", "target"])
def test_conflict_policy_on_a_both_link(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    sc = Scenario(tmp_path, db_url, db_url, direction="both", email_direction="both",
                  conflict=policy, monkeypatch=monkeypatch)
    try:
        sc.seed(40, crm_existing=0)
        sc.sync()
        sc.erp_update("C00001", name="From ERP")
        sc.crm_update("C00001", name="From CRM")
        r = sc.sync()
        assert r.counts["conflicts"] == 1
        want = "From ERP" if policy == "source" else "From CRM"
        assert sc.crm_rows()["C00001"]["name"] == want
        assert sc.erp_rows()["C00001"]["name"] == want
        (o,) = sc.outcomes(status="conflict")
        assert o["fields"][0]["field"] == "name"
        snap = sc.crm_snapshot(), sc.erp_snapshot()
        sc.sync()
        assert (sc.crm_snapshot(), sc.erp_snapshot()) == snap
    finally:
        sc.close()


@pytest.mark.postgresql
def test_state_on_postgresql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with fresh_database("sqlite", tmp_path, "sys") as sys_url, fresh_database(
        "postgresql", tmp_path, "state"
    ) as state_url:
        sc = Scenario(tmp_path, sys_url, sys_url, state_url=state_url, monkeypatch=monkeypatch)
        try:
            sc.seed()
            r = sc.sync()
            assert r.counts["created"] == ACTIVE - EXISTING
            sc.erp_update("C00001", name="Via PG state")
            sc.sync()
            assert sc.crm_rows()["C00001"]["name"] == "Via PG state"
        finally:
            sc.close()


def _erp_set(sc: Scenario, key: str, name: str, at: datetime) -> None:
    with sc.erp.begin() as c:
        c.execute(
            customers.update()
            .where(customers.c.customer_no == key)
            .values(name=name, changed_at=at)
        )


def test_a_poll_does_not_queue_again_what_it_already_applied(sc: Scenario) -> None:
    # The lookback re-reads the 2 s before the cursor on every poll; records whose
    # pair applied that very state are passed over, not queued again. Stamps in
    # the future keep the edits inside that window however slow the machine is.
    sc.sync()
    at = datetime(2030, 1, 1, 12, 0, 0)
    keys = ["C00000", "C00001", "C00006"]
    for k in keys:
        _erp_set(sc, k, f"Edited {k}", at)
    assert sc.sync().counts["updated"] == len(keys)
    sc.sync()  # the CRM side re-reads its rows once: our own writes moved their stamps
    for _ in range(2):
        again = sc.sync()
        assert again.counts["captured"] == 0, again.counts


def test_an_edit_within_the_same_second_is_still_applied(sc: Scenario) -> None:
    # Whole-second stamps (MariaDB DATETIME) give two edits in one second the
    # same version: the values digest tells them apart, so the second edit is
    # not taken for the state already applied.
    sc.sync()
    at = datetime(2030, 1, 1, 12, 0, 0)
    _erp_set(sc, "C00001", "First edit", at)
    assert sc.sync().counts["updated"] == 1
    _erp_set(sc, "C00001", "Second edit", at)  # same stamp, other values
    r = sc.sync()
    assert r.counts["updated"] == 1, r.counts
    assert sc.crm_rows()["C00001"]["name"] == "Second edit"
    sc.sync()  # the CRM side's echo of our write
    quiet = sc.sync()
    assert quiet.counts["captured"] == 0, quiet.counts
