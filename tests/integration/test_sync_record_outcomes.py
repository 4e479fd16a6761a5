"""`crmsync sync --record` checks each named record and reports its outcome, like the API:
queued, skipped with the reason (trigger condition not met, filter), not found (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scenario import Scenario, customers
from test_trigger import Setup
from typer.testing import CliRunner

from crmsync.cli import app


def _cli(d: Path, *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, [*args, "-c", str(d / "crmsync.yaml")])
    return r.exit_code, r.output


def test_sync_record_reports_each_record_and_syncs_the_ones_that_pass(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.doc("D1", amount=100, status="draft")
    s.doc("D2", amount=200, status="signed")
    code, out = _cli(tmp_path, "sync", "--record", "esign.document:D1",
                     "--record", "esign.document:D2", "--record", "esign.document:NOPE")
    # the one that does not exist is a bad argument; the others were still handled
    assert code == 2, out
    assert "does not exist" in out and "Traceback" not in out
    lines = {
        tok: ln for ln in out.splitlines() for tok in ln.split() if tok.startswith("esign.")
    }
    assert "skipped" in lines["esign.document:D1"]
    assert "trigger condition not met" in lines["esign.document:D1"]
    assert "queued" in lines["esign.document:D2"]
    assert "not found" in lines["esign.document:NOPE"] and "no record NOPE in" in out
    assert set(s.deals()) == {"D2"}
    code, out = _cli(tmp_path, "log", "--json", "--record", "esign.document:NOPE")
    (row,) = [json.loads(x) for x in out.splitlines() if x.strip()]
    assert (row["action"], row["link"]) == ("not found", "contracts")
    assert row["message"] == "sync requested by cli: not found — no record NOPE in esign.document"
    # signed now: the trigger fires, the request is queued and delivered
    s.doc("D1", amount=100, status="signed")
    code, out = _cli(tmp_path, "sync", "--record", "esign.document:D1")
    assert code == 0, out
    assert set(s.deals()) == {"D1", "D2"}
    # already delivered for these values: the trigger does not fire again
    code, out = _cli(tmp_path, "sync", "--record", "esign.document:D2")
    assert code == 0 and "trigger condition not met" in out, out


def test_target_records_and_source_deletes_get_their_reasons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sc = Scenario(tmp_path, f"sqlite:///{tmp_path / 'erp.db'}",
                  f"sqlite:///{tmp_path / 'crm.db'}", monkeypatch=monkeypatch, batch=10)
    try:
        sc.seed(n=20, crm_existing=2)
        sc.sync()
        with sc.erp.begin() as c:  # deleted at the source before it was ever synced
            c.execute(customers.insert().values(
                customer_no="C09999", name="Gone", status="X", contract_status="active"))
            # a paired record hard-deleted: no capture sees it; a request hands it over
            c.execute(customers.delete().where(customers.c.customer_no == "C00001"))
        unrelated = str(sc.crm_rows()[None]["id"])  # a CRM company no link pairs
        paired = str(sc.crm_rows()["C00000"]["id"])
        refs = ["erp.customer:C09999", f"crm.company:{unrelated}", "crm.company:999999",
                f"crm.company:{paired}", "erp.customer:C00001"]
        r = CliRunner().invoke(
            app, ["sync", "-c", str(sc.config_path), *(x for ref in refs for x in
                                                      ("--record", ref))])
        assert r.exit_code == 2, r.output  # crm.company:999999 does not exist
        rows = {}
        for ref in refs[:-1]:
            row = sc.outcomes(record=ref)[0]  # newest first
            rows[ref] = (row["action"], row["message"].split(": ", 1)[1])
        assert rows == {
            "erp.customer:C09999": (
                "skipped", "skipped — deleted at the source and never synced: nothing to do"),
            f"crm.company:{unrelated}": (
                "skipped", "skipped — not paired with a source record: nothing flows back from it"),
            "crm.company:999999": ("not found", "not found — no record 999999 in crm.company"),
            f"crm.company:{paired}": ("queued", "queued"),
        }
        # newest first: the request, then the delete it handed over
        done, queued = sc.outcomes(record="erp.customer:C00001")[:2]
        assert (done["action"], queued["action"]) == ("deleted", "queued")
        assert queued["message"].endswith(
            "no longer in its system: the delete is synced to its pair")
        assert sc.crm_rows()["C00001"]["status"] == "Deleted"
    finally:
        sc.close()
