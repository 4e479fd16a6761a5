"""Quotas belong to the system: `crmsync sync` counts every connector call against the
budget in the state database and stops when it is spent; the rest waits for the next
window and nothing is lost (status and GET /api/links: tests/api/test_quota_links.py).

Real SQLite systems and state; the guard's clock is moved, never slept on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dbs import fresh_database
from scenario import Scenario

from crmsync.config.loader import load_config
from crmsync.connectors import build_connectors
from crmsync.engine.quota import QuotaGuard
from crmsync.engine.runner import Engine, LinkReport
from crmsync.state import schema as S
from crmsync.state.store import StateStore

# A budget a few pages above what reading the systems' structure costs (about 14
# statements per SQLite table, every process): the migration needs many windows.
BUDGET = 30
# The most calls one step between two budget checks makes here. The first step of a
# run always goes (else a run that only read the structure would never progress): the
# structure and one page. Later steps: a page of 5 costs the CRM at most 4 statements
# (match lookup, read, batched create, batched update); a capture reads its changes
# in one go (a statement per page). A window never ends further over than that.
STEP = 20


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _budgeted(sc: Scenario, calls: int = BUDGET, per: str = "1h") -> None:
    crm = sc.crm.url.render_as_string(hide_password=False)
    text = sc.config_path.read_text()
    for old in ("    url: ${ERP_DB_URL}\n", f"    url: {crm}\n"):
        assert text.count(old) == 1
        text = text.replace(old, old + f"    quota: {{calls: {calls}, per: {per}}}\n")
    sc.config_path.write_text(text)


def _run(sc: Scenario, clock: Clock) -> tuple[LinkReport, dict[str, int]]:
    """One `crmsync sync` as a process would do it: fresh connectors, engine and guard."""
    config = load_config(sc.config_path)
    state = StateStore(config.state)
    state.migrate()
    conns = build_connectors(config, state)
    try:
        guard = QuotaGuard(config, state, clock)
        (report,) = Engine(config, state, conns, quota=guard).sync()
        used = {s: guard.status(s).used for s in ("erp", "crm")}  # type: ignore[union-attr]
        return report, used
    finally:
        state.close()
        for c in conns.values():
            c.close()


def _pending(sc: Scenario) -> list[Any]:
    st = StateStore(sc.state_url)
    try:
        with st.connect() as c:
            return list(c.execute(sa.select(S.messages)))
    finally:
        st.close()


STATE = [
    pytest.param("sqlite", id="sqlite-state"),
    pytest.param("postgresql", id="postgresql-state", marks=pytest.mark.postgresql),
]


@pytest.fixture(params=STATE)
def sc(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Scenario]:
    """The budget is kept in the state database: SQLite, and PostgreSQL (shared)."""
    with fresh_database(request.param, tmp_path, "state") as state_url:
        s = Scenario(tmp_path, f"sqlite:///{tmp_path / 'erp.db'}",
                     f"sqlite:///{tmp_path / 'crm.db'}", monkeypatch=monkeypatch, batch=5,
                     state_url=state_url)
        s.seed(n=60, crm_existing=3)
        _budgeted(s)
        yield s
        s.close()


def test_migration_over_several_windows_keeps_the_budget_and_loses_nothing(
    sc: Scenario,
) -> None:
    clock = Clock(datetime(2026, 6, 1, 12, 0, 0))
    active = {k for k, v in sc.erp_rows().items() if v["contract_status"] == "active"}
    windows = 0
    while True:
        report, used = _run(sc, clock)
        assert max(used.values()) <= BUDGET + STEP, (windows, used)
        if report.status == "ok":
            break
        assert report.status == "waiting", report.error
        assert "spent until" in str(report.error) and "nothing is lost" in str(report.error)
        # Run again in the same window: it makes no call at all and still waits.
        again, used_again = _run(sc, clock)
        assert again.status == "waiting" and used_again == used
        assert all(m.attempts == 0 for m in _pending(sc))  # waiting spends no attempt
        clock.now += timedelta(hours=1)
        windows += 1
        assert windows < 80
    assert windows >= 2  # it really took several windows
    crm = sc.crm_rows()
    assert active <= set(crm)
    assert all(crm[k]["name"] == sc.erp_rows()[k]["name"] for k in active)
    with sc.crm.connect() as c:  # resumed at its page: nothing created twice
        dupes = c.exec_driver_sql(
            "SELECT org_number FROM company WHERE org_number IS NOT NULL"
            " GROUP BY org_number HAVING COUNT(*) > 1").all()
    assert dupes == []
    created = [o["source_ref"] for o in sc.outcomes(status="created")]
    assert len(created) == len(set(created))

    # Later changes are drained under the same budget: the rest waits, then arrives.
    for k in sorted(active):
        sc.erp_update(k, name=f"Budgeted {k}")
    while True:
        clock.now += timedelta(hours=1)
        report, used = _run(sc, clock)
        assert max(used.values()) <= BUDGET + STEP, used
        if report.status == "ok" and not _pending(sc):
            break
        windows += 1
        assert windows < 200
    crm = sc.crm_rows()
    assert all(crm[k]["name"] == f"Budgeted {k}" for k in active)


def _cli(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crmsync", *args], cwd=work, capture_output=True, text=True,
        timeout=120, env={**os.environ, "COLUMNS": "250"},
    )


def _quota_rows(sc: Scenario) -> dict[str, int]:
    st = StateStore(sc.state_url)
    try:
        with st.connect() as c:
            return {r.system: r.calls for r in c.execute(sa.select(S.quota_use))}
    finally:
        st.close()


def test_the_cli_waits_says_so_and_a_second_process_shares_the_budget(sc: Scenario) -> None:
    _budgeted_again = sc.config_path.read_text().replace(f"calls: {BUDGET}", "calls: 25")
    sc.config_path.write_text(_budgeted_again.replace("per: 1h", "per: 7d"))
    r = _cli(sc.tmp, "sync", "-c", str(sc.config_path))
    # waiting is no failure: exit 0, and the table says until when
    assert r.returncode == 0, r.stderr
    assert "waiting" in r.stdout and "spent until" in r.stdout, r.stdout
    used = _quota_rows(sc)
    assert max(used.values()) <= 25 + STEP
    r = _cli(sc.tmp, "sync", "-c", str(sc.config_path))
    assert r.returncode == 0 and "waiting" in r.stdout
    assert _quota_rows(sc) == used  # the second process counted the first one's calls
    r = _cli(sc.tmp, "status", "-c", str(sc.config_path))
    assert r.returncode == 0, r.stderr
    assert "migration waiting" in r.stdout and "spent until" in r.stdout, r.stdout


def test_a_run_waits_out_a_rate_and_holds_the_average(sc: Scenario) -> None:
    text = sc.config_path.read_text().replace(f"calls: {BUDGET}, per: 1h",
                                              "calls: 100000, per: 24h, rate: 20")
    sc.config_path.write_text(text)
    clock = Clock(datetime(2026, 6, 1, 12, 0, 0))
    start = clock.now
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # the guard's clock moves instead of the process
        slept.append(seconds)
        clock.now += timedelta(seconds=seconds)

    config = load_config(sc.config_path)
    state = StateStore(config.state)
    state.migrate()
    conns = build_connectors(config, state)
    try:
        guard = QuotaGuard(config, state, clock)
        engine = Engine(config, state, conns, quota=guard)
        engine.quota_sleep = sleep
        (report,) = engine.sync()
        assert report.status == "ok", report.error  # waited, did not give up
        used = max(guard.status(s).used for s in ("erp", "crm"))  # type: ignore[union-attr]
    finally:
        state.close()
        for c in conns.values():
            c.close()
    assert slept  # it did wait
    elapsed = (clock.now - start).total_seconds()
    # one second's burst plus at most one step over, then never faster than the rate
    assert used <= 20 * (elapsed + 1) + STEP
    active = {k for k, v in sc.erp_rows().items() if v["contract_status"] == "active"}
    assert active <= set(sc.crm_rows())


def test_a_scheduled_migration_keeps_the_budget_too(sc: Scenario) -> None:
    """`serve`'s scheduler migrates page by page under the same budget as the CLI."""
    from crmsync.service.context import ServiceContext
    from crmsync.service.scheduler import Scheduler
    from crmsync.service.worker import Worker

    clock = Clock(datetime(2026, 6, 1, 12, 0, 0))
    ctx = ServiceContext.open(sc.config_path, clock=clock)
    try:
        with ctx.state.begin() as c:
            ctx.state.request_run(c, "customers", now=clock.now)
        scheduler, worker = Scheduler(ctx), Worker(ctx)
        runs: list[str] = []
        windows = 0
        while windows < 80:
            scheduler.run_once()
            while worker.run_once():
                pass
            for s in ("erp", "crm"):
                assert ctx.quota.status(s).used <= BUDGET + STEP  # type: ignore[union-attr]
            runs = [r["status"] for r in ctx.state.runs("customers", 1000)]
            with ctx.state.connect() as c:
                mig = ctx.state.get_cursor(c, "customers", "source", "migration")
                left = ctx.state.queue_counts(c)
            if mig and mig.get("done") and not left.get("pending"):
                break
            clock.now += timedelta(hours=1)
            windows += 1
        assert 2 <= windows < 80 and "waiting" in runs
    finally:
        ctx.close()
    active = {k for k, v in sc.erp_rows().items() if v["contract_status"] == "active"}
    crm = sc.crm_rows()
    assert active <= set(crm)
    assert all(crm[k]["name"] == sc.erp_rows()[k]["name"] for k in active)
