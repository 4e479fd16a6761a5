"""`crmsync status` and `GET /api/links` say how many messages wait for a quota and
when it reopens; the worker sends them then, none dropped. Real HTTP, SQLite."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from apiservice import LiveServer
from scenario import Scenario
from typer.testing import CliRunner

from crmsync.api.auth import create_token
from crmsync.cli import app
from crmsync.service.context import ServiceContext
from crmsync.service.scheduler import Scheduler
from crmsync.service.worker import Worker
from crmsync.state import schema as S
from crmsync.state.store import StateStore, utcnow

# A page of 5 costs the CRM at most a few statements; reading the tables' structure
# at start-up about 14: the most a window can end over its budget.
STEP = 15


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _budgeted(sc: Scenario, calls: int, per: str) -> None:
    crm = sc.crm.url.render_as_string(hide_password=False)
    text = sc.config_path.read_text()
    for old in ("    url: ${ERP_DB_URL}\n", f"    url: {crm}\n"):
        assert text.count(old) == 1
        text = text.replace(old, old + f"    quota: {{calls: {calls}, per: {per}}}\n")
    sc.config_path.write_text(text)


def _pending(sc: Scenario) -> list[Any]:
    st = StateStore(sc.state_url)
    try:
        with st.connect() as c:
            return list(c.execute(sa.select(S.messages)))
    finally:
        st.close()


def test_status_and_api_links_show_what_waits_for_a_quota_and_until_when(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sc = Scenario(tmp_path, f"sqlite:///{tmp_path / 'erp.db'}",
                  f"sqlite:///{tmp_path / 'crm.db'}", monkeypatch=monkeypatch, batch=5)
    try:
        sc.seed(n=60, crm_existing=3)
        sc.sync()
        _budgeted(sc, calls=20, per="7d")
        active = sorted(k for k, v in sc.erp_rows().items() if v["contract_status"] == "active")
        for k in active:
            sc.erp_update(k, name=f"Later {k}")
        clock = Clock(utcnow())  # `crmsync status` reads the real clock: same 7d window
        ctx = ServiceContext.open(sc.config_path, clock=clock)
        server = LiveServer(ctx)
        server.start()
        try:
            with ctx.state.begin() as c:
                ctx.state.request_run(c, "customers", now=clock.now)
            Scheduler(ctx).run_once()
            worker = Worker(ctx)
            for _ in range(100):
                if not worker.run_once():
                    break
            assert worker.quota_waiting == {"customers": "crm"}
            st = ctx.quota.status("crm")  # type: ignore[union-attr]
            assert st is not None and st.remaining == 0 and st.used <= 20 + STEP
            waiting = [m for m in _pending(sc) if m.status == "pending"]
            assert waiting and all(m.attempts == 0 for m in waiting)
            token = create_token(ctx.state, "viewer", "quota-viewer")
            (link,) = httpx.get(f"{server.url}/api/links", timeout=10,
                                headers={"Authorization": f"Bearer {token}"}).json()
            assert link["quota_waiting"] == len(waiting)
            assert link["quota_system"] == "crm"
            resets = st.resets_at.strftime("%Y-%m-%dT%H:%M:%S")
            assert link["quota_resets_at"].startswith(resets)
            r = CliRunner().invoke(app, ["status", "-c", str(sc.config_path)])
            assert r.exit_code == 0, r.output
            flat = " ".join(r.output.split())
            assert (f"waiting for quota: customers: {len(waiting)} message(s) wait for crm "
                    f"until {st.resets_at:%Y-%m-%d %H:%M:%S} UTC") in flat, r.output
            # A sync request while the source's budget is spent: checking would spend
            # it too, so the records are queued unchecked, and the answer says so.
            ctx.quota.spend("erp", 1000)  # type: ignore[union-attr]
            admin = create_token(ctx.state, "admin", "quota-admin")
            r = httpx.post(f"{server.url}/api/links/customers/sync", timeout=10,
                           json={"records": [active[0]]},
                           headers={"Authorization": f"Bearer {admin}"})
            assert r.status_code == 202, r.text
            (rec,) = r.json()["records"]
            assert rec["status"] == "queued"
            assert rec["reason"].startswith("not checked: quota of erp spent until")
            # the next window: everything goes out, nothing was dropped
            clock.now = st.resets_at
            for _ in range(100):
                if not worker.run_once():
                    break
            assert not [m for m in _pending(sc) if m.status == "pending"]
            assert all(sc.crm_rows()[k]["name"] == f"Later {k}" for k in active)
        finally:
            server.stop()
            ctx.close()
    finally:
        sc.close()
