"""Rules in the service: listed by the API, switched by admins (audited), run by the worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from apiservice import STATE_BACKENDS, LiveServer
from dbs import fresh_database
from rulesenv import Cadence, Receiver, hook

from crmsync.api.auth import create_token
from crmsync.service.context import ServiceContext
from crmsync.service.scheduler import Scheduler
from crmsync.service.worker import Worker

__all__ = ["hook"]


@pytest.mark.parametrize("state", STATE_BACKENDS)
def test_rules_listed_switched_and_run_by_the_worker(
    tmp_path: Path, hook: Receiver, state: str
) -> None:
    with fresh_database(state, tmp_path, "state") as url:
        _listed_switched_and_run(Cadence(tmp_path, hook, url), tmp_path, hook)


def _listed_switched_and_run(s: Cadence, tmp_path: Path, hook: Receiver) -> None:
    s.contact(1, name="Ada", email="ada@x.test", type="Lead", status="Open", do_not_call=True,
              owner="kim")
    s.sync()  # migration and the rules' baseline
    ctx = ServiceContext.open(tmp_path / "crmsync.yaml")
    server = LiveServer(ctx)
    server.start()
    try:
        admin = create_token(ctx.state, "admin", "ops")
        viewer = create_token(ctx.state, "viewer", "watcher")
        import httpx

        def client(token: str) -> httpx.Client:
            return httpx.Client(base_url=server.url, timeout=10,
                                headers={"Authorization": f"Bearer {token}"})

        got = client(viewer).get("/api/rules").json()
        assert [r["name"] for r in got] == ["exit_cadence", "call_outcome"]
        assert got[0]["on"] == "crm.contact" and got[0]["enabled"] is True
        assert got[0]["actions"] == ["set", "activity", "sync", "webhook"]
        assert got[1]["schedule"] == "*/5 * * * *" and got[0]["fired"] == 0
        assert client(viewer).post("/api/rules/exit_cadence/disable").status_code == 403
        assert client(admin).post("/api/rules/nosuch/disable").status_code == 404
        r = client(admin).post("/api/rules/exit_cadence/disable")
        assert r.status_code == 200 and r.json()["enabled"] is False
        assert r.json()["enabled_changed_by"] == "ops"

        # Closed while the rule is off: captured, but nothing fires.
        s.contact(1, status="Closed")
        assert client(admin).post("/api/links/prospects/sync").status_code == 202
        Scheduler(ctx).run_once()
        worker = Worker(ctx)
        for _ in range(5):
            worker.run_once()
        assert hook.got == [] and s.activities() == []
        assert client(viewer).get("/api/rules").json()[0]["queue"]["pending"] == 1

        # Switched on: the waiting change is evaluated and every action runs once.
        assert client(admin).post("/api/rules/exit_cadence/enable").json()["enabled"] is True
        for _ in range(5):
            worker.run_once()
        assert len(hook.events()) == 1
        assert s.activities() == [(1, "Removed from cadence", "Closed by kim")]
        assert s.prospects()["ada@x.test"][2] == "exited"
        got = client(viewer).get("/api/rules").json()[0]
        assert got["fired"] == 1 and got["queue"]["pending"] == 0
        audit = client(admin).get("/api/audit").json()
        assert [a["action"] for a in audit[:3]] == ["rule.enable", "link.sync", "rule.disable"]
        assert audit[0]["target"] == "rule:exit_cadence"
        # The record's timeline in the API shows the rule and its actions.
        tl = client(viewer).get("/api/records/crm/contact/1/activity").json()
        texts = " ".join(e["text"] for e in tl)
        assert "Rule exit_cadence" in texts and "webhook" in texts
    finally:
        server.stop()
        ctx.close()
