"""A record's timeline is its outcomes told in words when read (schema v6): a plain
create or update leaves no timeline row, and what `log --record` and the timeline
show of a create stays the values it wrote, whatever changes later."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from scenario import Scenario
from typer.testing import CliRunner

from crmsync.cli import app
from crmsync.state import schema as S
from crmsync.state.store import StateStore


@pytest.fixture
def sc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    s = Scenario(tmp_path, f"sqlite:///{tmp_path / 'erp.db'}",
                 f"sqlite:///{tmp_path / 'crm.db'}", monkeypatch=monkeypatch)
    s.seed(n=10, crm_existing=0)  # C00000, C00001, C00005, C00006 active: created
    yield s
    s.close()


def _timeline(sc: Scenario, ref: str) -> list[dict[str, object]]:
    st = StateStore(sc.state_url)
    try:
        return st.activities(ref)
    finally:
        st.close()


def test_a_create_and_an_update_are_told_from_their_outcomes(sc: Scenario) -> None:
    assert sc.sync().counts["created"] == 4
    cid = sc.crm_rows()["C00001"]["id"]
    target, source = f"crm.company:{cid}", "erp.customer:C00001"
    with sa.create_engine(sc.state_url).connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(S.activities)).scalar() == 0
        # one page row for the batch's plain creates; the values are the pairs'
        (page,) = c.execute(
            sa.select(S.outcomes).where(S.outcomes.c.action == "created")).all()
        created_in = c.execute(sa.select(S.identities.c.created_in)).scalars().all()
    assert (page.source_ref, page.target_ref, page.action, page.records) == (
        "erp.customer:", "crm.company:", "created", 4)
    crm = sc.crm_rows()
    assert json.loads(page.fields)["page"] == [
        [k, str(crm[k]["id"])] for k in ("C00000", "C00001", "C00005", "C00006")]
    assert created_in == [page.id] * 4
    (logged,) = sc.outcomes(record=source)
    assert (logged["source_ref"], logged["target_ref"], logged["action"]) == (
        source, target, "created")
    assert sc.outcomes(record=target) == [logged]
    assert len(sc.outcomes(status="created")) == 4

    (created,) = _timeline(sc, target)
    assert (created["kind"], created["record_ref"], created["link"]) == (
        "created", target, "customers")
    assert created["text"].startswith(
        "Sync completed: record created (crmsync link customers, from erp.customer:C00001)")
    assert "name = Customer 1" in created["text"]
    assert created["deliver"] is False and created["delivered_at"] is None
    assert _timeline(sc, source) == [created]  # the source's timeline names it too

    sc.erp_update("C00001", name="Renamed 1")
    assert sc.sync().counts["updated"] == 1
    updated, again = _timeline(sc, target)
    assert again == created  # the create still tells what it wrote
    assert updated["kind"] == "updated" and "name = Renamed 1" in updated["text"]
    assert _timeline(sc, source) == [updated, created]
    # `log --record` shows the create's values, not today's
    r = CliRunner().invoke(app, ["log", "--json", "--record", source,
                                 "-c", str(sc.config_path)])
    assert r.exit_code == 0, r.output
    upd, cre = [json.loads(x) for x in r.output.splitlines() if x.strip()]
    assert cre["action"] == "created" and upd["action"] == "updated"
    assert {f["field"]: f["new"] for f in cre["fields"]}["name"] == "Customer 1"
    assert [(f["field"], f["old"], f["new"]) for f in upd["fields"]
            if f["status"] == "updated"] == [("name", "Customer 1", "Renamed 1")]
    # the text view shows the same timeline, oldest first
    r = CliRunner().invoke(app, ["log", "--record", target, "-c", str(sc.config_path)])
    assert r.exit_code == 0, r.output
    assert "timeline of" in r.output and "Renamed 1" in r.output


def test_a_create_keeps_its_rejections_on_the_timeline(sc: Scenario) -> None:
    sc.erp_update("C00000", employees="lots")
    sc.sync()
    cid = sc.crm_rows()["C00000"]["id"]
    (entry,) = _timeline(sc, f"crm.company:{cid}")
    assert "Fields not updated: employees: " in entry["text"]
    (o,) = sc.outcomes(record="erp.customer:C00000")
    assert [f["field"] for f in o["fields"] if f["status"] == "rejected"] == ["employees"]
