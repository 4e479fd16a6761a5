"""The real `crmsync` CLI in a subprocess, on the demo's SQLite databases."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from crmsync.demo import sqlite as demo

SECRET_CANARY = "sqlite:///erp.db?canary=Zq8xS3cr3t"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    demo.build_erp(tmp_path / "erp.db", 1500)
    demo.build_crm(tmp_path / "crm.db", tmp_path / "erp.db")
    demo.write_config(tmp_path / "crmsync.yaml")
    return tmp_path


def cli(
    work: Path, *args: str, env_url: str = "sqlite:///erp.db"
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ERP_DB_URL": env_url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "crmsync", *args], cwd=work, env=env, capture_output=True,
        text=True, timeout=120,
    )


def companies(work: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(work / "crm.db") as c:
        return c.execute("SELECT * FROM company ORDER BY id").fetchall()


def test_check_plan_sync_log(work: Path) -> None:
    r = cli(work, "check")
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout

    before = companies(work)
    r = cli(work, "plan")
    assert r.returncode == 0, r.stderr
    assert "dry run" in r.stdout and "created" in r.stdout
    assert companies(work) == before
    assert not (work / "crmsync.db").exists()

    r = cli(work, "sync")
    assert r.returncode == 0, r.stderr
    assert "migration" in r.stdout
    after = companies(work)
    assert len(after) > len(before)

    r = cli(work, "sync")
    assert r.returncode == 0, r.stderr
    assert "incremental" in r.stdout
    assert companies(work) == after  # a second sync writes nothing

    r = cli(work, "log", "--status", "rejected", "--json", "--limit", "500")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert rows, "the demo data has unconvertible employee counts"
    for row in rows:
        rej = [f for f in row["fields"] if f["status"] == "rejected"]
        assert rej and rej[0]["field"] == "employees" and "expected" in rej[0]["reason"]
        assert any(f["status"] == "updated" for f in row["fields"])  # the rest applied

    ref = rows[0]["source_ref"]
    r = cli(work, "log", "--record", ref)
    assert r.returncode == 0 and ref in r.stdout
    r = cli(work, "log", "--record", "not-a-ref")
    assert r.returncode == 2 and "SYSTEM.OBJECT:ID" in r.stderr
    # A typo in the system or object is refused naming what exists, not "no outcomes".
    r = cli(work, "log", "--record", "erp.custmer:C1")
    assert r.returncode == 2 and "customer" in r.stderr and "no outcomes" not in r.stdout
    r = cli(work, "log", "--record", "epr.customer:C1")
    assert r.returncode == 2 and "erp" in r.stderr
    # A known object whose id has no history is simply that: nothing to show.
    r = cli(work, "log", "--record", ref.rsplit(":", 1)[0] + ":NO-SUCH-ID")
    assert r.returncode == 0 and "no outcomes match" in r.stdout


def test_check_reports_key_paths_and_exits_non_zero(work: Path) -> None:
    cfg = (work / "crmsync.yaml").read_text()
    bad = cfg.replace("{source: city, target: city}", "{source: city, target: cty}")
    bad = bad.replace(
        "{source: employees, target: employees}", "{source: since, target: employees}"
    )
    (work / "bad.yaml").write_text(bad)
    r = cli(work, "check", "-c", "bad.yaml")
    assert r.returncode == 2  # a configuration problem
    assert "bad.yaml:" in r.stderr
    assert "links.customers.fields[5].target: field 'cty' not found on crm.company" in r.stderr
    assert "cannot map date field 'since' to integer field 'employees'" in r.stderr
    # sync refuses to run on an invalid config and writes nothing
    before = companies(work)
    r = cli(work, "sync", "-c", "bad.yaml")
    assert r.returncode == 2
    assert companies(work) == before

    bad2 = cfg.replace("op: eq", "op: equals").replace("direction: forward", "direction: sideways")
    (work / "bad2.yaml").write_text(bad2)
    r = cli(work, "check", "-c", "bad2.yaml")
    assert r.returncode == 2
    assert "links.customers.filter.all[0].op: expected one of eq" in r.stderr
    assert "links.customers.direction" in r.stderr


def test_secrets_from_env_never_printed(work: Path) -> None:
    cfg = (work / "crmsync.yaml").read_text().replace("table: customers", "table: custmers")
    (work / "bad.yaml").write_text(cfg)
    for args in (("check", "-c", "bad.yaml"), ("sync", "-c", "bad.yaml"), ("check",), ("plan",)):
        r = cli(work, *args, env_url=SECRET_CANARY)
        assert "Zq8xS3cr3t" not in r.stdout + r.stderr, args


def test_schema_is_json_schema(work: Path) -> None:
    r = cli(work, "schema")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert "links" in schema["properties"] and "systems" in schema["properties"]


def test_sync_record_pushes_one_record_now(work: Path) -> None:
    assert cli(work, "sync").returncode == 0
    with sqlite3.connect(work / "erp.db") as c:
        no = c.execute(
            "SELECT customer_no FROM customers WHERE contract_status = 'active' "
            "AND status = 'A' ORDER BY customer_no LIMIT 1"
        ).fetchone()[0]
        # an edit the cursor cannot see (no new stamp): only an explicit sync moves it
        c.execute("UPDATE customers SET name = 'Pushed by hand' WHERE customer_no = ?", (no,))
    r = cli(work, "sync", "--record", f"erp.customer:{no}")
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(work / "crm.db") as c:
        (name,) = c.execute("SELECT name FROM company WHERE org_number = ?", (no,)).fetchone()
    assert name == "Pushed by hand"
    r = cli(work, "sync", "--record", "nosuch.thing:1")
    assert r.returncode == 2 and "no enabled link" in r.stderr
