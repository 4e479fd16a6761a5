"""Every record is counted once per run, and every count can be found with `crmsync log`.

A migration and an incremental run with creates, first pairings, updates, deletes,
rejected fields, failures (a target NOT NULL column), skips and filtered records,
on SQLite, PostgreSQL and MariaDB systems; each run's counts are checked against
the log rows of that run, through the store and through the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from crmsync.config.loader import load_config
from crmsync.connectors import build_connectors
from crmsync.engine.retry import RetryPolicy
from crmsync.engine.runner import SUMMARY_KEYS, Engine, LinkReport
from crmsync.state.store import StateStore

CONFIG = """\
state: sqlite:///{d}/state.db
systems:
  erp:
    connector: sql
    url: {url}
    objects:
      customer:
        table: customers
        key: k
        updated_at: changed_at
        deleted: {{field: status, value: X}}
  crm:
    connector: sql
    url: {url}
    objects:
      company: {{table: company, key: id, updated_at: updated_at}}
links:
  customers:
    source: erp.customer
    target: crm.company
    match: {{k: k}}
    filter: {{field: active, op: eq, value: Y}}
    fields:
      - {{source: name, target: name}}
      - {{source: employees, target: employees}}
      - {{source: email, target: email, direction: backward}}
    on_delete: delete
    batch_size: 3
"""

# Action counts: each record has exactly one per run; the others are statuses.
ACTIONS = ("created", "updated", "unchanged", "matched", "deleted", "skipped", "filtered",
           "failed")
LOG_STATUS = {"conflicts": "conflict"}  # count key -> `log --status` value


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Setup:
    def __init__(self, d: Path, url: str) -> None:
        self.d, self.url = d, url
        self.eng = sa.create_engine(url)
        md = sa.MetaData()
        self.customers = sa.Table(
            "customers", md,
            sa.Column("k", sa.String(10), primary_key=True),
            sa.Column("name", sa.String(50)),
            sa.Column("employees", sa.String(20)),
            sa.Column("email", sa.String(50)),
            sa.Column("active", sa.String(1)),
            sa.Column("status", sa.String(1)),
            sa.Column("changed_at", sa.DateTime),
        )
        self.company = sa.Table(
            "company", md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("k", sa.String(10), unique=True),
            sa.Column("name", sa.String(50), nullable=False),
            sa.Column("employees", sa.Integer),
            sa.Column("email", sa.String(50)),
            sa.Column("updated_at", sa.DateTime),
        )
        md.create_all(self.eng)
        (d / "crmsync.yaml").write_text(CONFIG.format(d=d, url=url))
        os.environ.pop("ERP_DB_URL", None)

    def put(self, k: str, **values: Any) -> None:
        row = {"name": f"Customer {k}", "employees": "10", "email": f"{k}@erp.example",
               "active": "Y", "status": "A", **values, "changed_at": now()}
        with self.eng.begin() as c:
            n = c.execute(self.customers.update().where(self.customers.c.k == k).values(**row))
            if not n.rowcount:
                c.execute(self.customers.insert().values(k=k, **row))

    def crm_put(self, k: str, name: str) -> None:
        with self.eng.begin() as c:
            c.execute(self.company.insert().values(
                k=k, name=name, employees=10, email=None,
                updated_at=now() - timedelta(days=1)))

    def crm(self) -> dict[str, dict[str, Any]]:
        with self.eng.connect() as c:
            return {r.k: dict(r._mapping) for r in c.execute(self.company.select())}

    def sync(self, retry: RetryPolicy | None = None) -> tuple[LinkReport, int]:
        config = load_config(self.d / "crmsync.yaml")
        state = StateStore(config.state)
        state.migrate()
        conns = build_connectors(config, state)
        try:
            (r,) = Engine(config, state, conns, retry=retry).sync()
            (run,) = state.runs(limit=1)
            assert r.status == "ok", r.error
            assert run["counts"] == r.summary()  # what the API shows is what was printed
            return r, run["id"]
        finally:
            state.close()
            for c in conns.values():
                c.close()

    def log(self, run_id: int) -> list[dict[str, Any]]:
        st = StateStore(f"sqlite:///{self.d}/state.db")
        try:
            return [o for o in st.outcomes(limit=100_000) if o["run_id"] == run_id]
        finally:
            st.close()

    def cli_log(self, status: str) -> list[dict[str, Any]]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        p = subprocess.run(
            [sys.executable, "-m", "crmsync", "log", "-c", str(self.d / "crmsync.yaml"),
             "--status", status, "--json", "--limit", "100000"],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )
        assert p.returncode == 0, p.stderr
        return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def check_counts_against_log(s: Setup, report: LinkReport, run_id: int) -> Counter[str]:
    counts = report.summary()
    rows = s.log(run_id)
    # each record counted once: one action count per record met in the run
    records = {r["source_ref"] for r in rows}
    acted = sum(counts.get(k, 0) for k in ACTIONS)
    assert acted >= len(records)
    assert acted - counts.get("unchanged", 0) == len(rows) == len(records), (counts, rows)
    # every non-zero count but plain unchanged is the log rows of this run with it
    for key in SUMMARY_KEYS:
        if key == "unchanged":
            continue
        want = LOG_STATUS.get(key, key)
        found = [r for r in rows if want in (r["status"], r["action"])]
        assert len(found) == counts[key], (key, counts, [(r["source_ref"], r["action"],
                                                          r["status"]) for r in rows])
    # a create shows only what it wrote: never `updated ∅ -> ∅` (the backward email),
    # neither in the log nor on the record's timeline
    st = StateStore(f"sqlite:///{s.d}/state.db")
    try:
        for r in rows:
            if r["action"] == "created":
                assert all(f["new"] is not None for f in r["fields"]
                           if f["status"] == "updated")
                assert "email" not in {f["field"] for f in r["fields"]}
                (entry,) = [a for a in st.activities(r["target_ref"]) if a["kind"] == "created"]
                assert "name = " in entry["text"] and "email" not in entry["text"]
    finally:
        st.close()
    return Counter({k: v for k, v in counts.items() if v})


@pytest.fixture
def setup(db_url: str, tmp_path: Path) -> Setup:
    s = Setup(tmp_path, db_url)
    for k in ("A1", "A2", "A3"):
        s.put(k)
    s.put("R1", employees="lots")  # created, its employees rejected
    s.put("M1", name="Customer M1")  # paired by key, renamed
    s.crm_put("M1", "Stale M1")
    s.put("M2", name="Customer M2")  # paired by key, already equal
    s.crm_put("M2", "Customer M2")
    s.put("F1", active="N")  # filtered
    s.put("F2", active="N")
    s.put("D1", status="X")  # deleted at the source before it was ever synced: skipped
    s.put("N1", name=None)  # company.name is NOT NULL: the create fails
    s.put("N2", name=None)
    return s


def test_migration_counts_each_record_once_and_logs_it(setup: Setup) -> None:
    s = setup
    report, run_id = s.sync()
    counts = check_counts_against_log(s, report, run_id)
    assert counts["created"] == 4 and counts["matched"] == 2
    assert counts["rejected"] == 1 and counts["filtered"] == 2 and counts["skipped"] == 1
    assert counts["failed"] == 2  # once each, although the capture meets them again
    assert not counts["unchanged"] and not counts["updated"]
    # the same through the CLI, as a user would look them up
    for status, n in (("failed", 2), ("skipped", 1), ("filtered", 2), ("matched", 2),
                      ("created", 4), ("rejected", 1)):
        assert len(s.cli_log(status)) == n, status
    assert set(s.crm()) == {"A1", "A2", "A3", "R1", "M1", "M2"}
    assert s.crm()["M1"]["name"] == "Customer M1"

    # incremental: an update, a delete, a record entering the filter, one leaving it
    s.put("A1", name="Renamed")
    s.put("A2", status="X")
    s.put("F1", active="Y")
    s.put("A3", active="N")
    report2, run2 = s.sync()
    counts2 = check_counts_against_log(s, report2, run2)
    assert counts2["updated"] == 1 and counts2["deleted"] == 1
    assert counts2["created"] == 1 and counts2["filtered"] >= 2  # A3 now, F2 re-read
    crm = s.crm()
    assert crm["A1"]["name"] == "Renamed" and "A2" not in crm and "F1" in crm
    assert crm["A3"]["name"] == "Customer A3"  # left alone, not deleted

    # nothing changed: a re-read of the overlap is counted once, as unchanged, and logs
    # only what it must (the records it skips or filters, with the reason)
    report3, run3 = s.sync()
    counts3 = check_counts_against_log(s, report3, run3)
    assert not (counts3["created"] or counts3["updated"] or counts3["deleted"]
                or counts3["matched"])


def test_a_failure_due_again_within_the_run_is_not_retried_in_it(setup: Setup) -> None:
    """A back-off shorter than the run (here none at all, as a loaded machine makes a
    short jittered one) must not let the drain meet a failed record again: it is
    tried, counted and logged once per run, and its attempts say so."""
    s = setup
    at_once = RetryPolicy(initial=0.0, jitter=False)
    report, run_id = s.sync(at_once)
    counts = check_counts_against_log(s, report, run_id)
    assert counts["failed"] == 2
    assert [r["source_ref"] for r in s.log(run_id) if r["status"] == "failed"].count(
        "erp.customer:N1") == 1
    # a failure in the drain of an incremental run: the same
    s.put("N1", name=None, email="again@erp.example")
    report2, run2 = s.sync(at_once)
    counts2 = check_counts_against_log(s, report2, run2)
    assert counts2["failed"] >= 1
    st = StateStore(f"sqlite:///{s.d}/state.db")
    try:
        msgs = {m["record_id"]: m for m in st.list_messages(link="customers")}
    finally:
        st.close()
    assert msgs["N1"]["attempts"] == 2  # once per run, two runs
