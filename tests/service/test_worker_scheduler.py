"""Worker, scheduler and leases on real databases; an outage through a loopback proxy."""

from __future__ import annotations

import socket
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from dbs import fresh_database
from netproxy import Proxy
from scenario import Scenario

from crmsync.engine.lease import make_worker_id
from crmsync.service.context import ServiceContext
from crmsync.service.scheduler import Scheduler
from crmsync.service.worker import Worker
from crmsync.state import schema as S
from crmsync.state.store import utcnow


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 6, 1, 12, 0, 0)

    def __call__(self) -> datetime:
        return self.now


def _with_schedule(sc: Scenario, schedule: str) -> None:
    text = sc.config_path.read_text()
    line = f'    schedule: "{schedule}"\n    batch_size:'
    sc.config_path.write_text(text.replace("    batch_size:", line))


@pytest.fixture
def sc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    url_e = f"sqlite:///{tmp_path / 'erp.db'}"
    url_c = f"sqlite:///{tmp_path / 'crm.db'}"
    s = Scenario(tmp_path, url_e, url_c, monkeypatch=monkeypatch)
    s.seed()
    yield s
    s.close()


def test_interval_schedule_then_worker_applies(sc: Scenario) -> None:
    _with_schedule(sc, "15m")
    clock = Clock()
    ctx = ServiceContext.open(sc.config_path, clock=clock)
    try:
        sched, worker = Scheduler(ctx), Worker(ctx)
        assert sched.run_once() == ["customers"]  # never ran: due at once (migration)
        assert len(sc.crm_rows()) > 1
        sc.erp_update("C00001", name="Scheduled rename")
        clock.now += timedelta(minutes=5)
        assert sched.run_once() == []  # not due yet
        clock.now += timedelta(minutes=10)
        assert sched.run_once() == ["customers"]
        while worker.run_once():
            pass
        assert sc.crm_rows()["C00001"]["name"] == "Scheduled rename"
        with ctx.state.connect() as c:
            assert ctx.state.queue_counts(c).get("pending", 0) == 0
    finally:
        ctx.close()


def test_cron_schedule_and_run_request(sc: Scenario) -> None:
    _with_schedule(sc, "0 * * * *")
    clock = Clock()
    clock.now = datetime(2026, 6, 1, 12, 10)
    ctx = ServiceContext.open(sc.config_path, clock=clock)
    try:
        sched = Scheduler(ctx)
        assert sched.run_once() == ["customers"]
        clock.now = datetime(2026, 6, 1, 12, 59)
        assert sched.run_once() == []
        clock.now = datetime(2026, 6, 1, 13, 0)
        assert sched.run_once() == ["customers"]
        # an explicit request (what POST /api/links/{name}/sync does) runs it now
        with ctx.state.begin() as c:
            c.execute(sa.update(S.link_state).values(next_run_at=clock.now))
        assert sched.run_once() == ["customers"]
    finally:
        ctx.close()


def test_unscheduled_link_runs_only_when_requested(sc: Scenario) -> None:
    ctx = ServiceContext.open(sc.config_path, clock=Clock())
    try:
        assert Scheduler(ctx).run_once() == []
    finally:
        ctx.close()


def _running(ctx: ServiceContext, rid: str, claimed_by: str, lease_until: datetime) -> None:
    now = utcnow()
    with ctx.state.begin() as c:
        c.execute(
            sa.insert(S.messages).values(
                link="customers", side="source", record_id=rid, op="upsert", status="running",
                attempts=0, available_at=now, created_at=now, updated_at=now,
                claimed_by=claimed_by, lease_until=lease_until,
            )
        )


def test_leases_recover_dead_and_expired_claims_only(sc: Scenario) -> None:
    sc.sync()
    ctx = ServiceContext.open(sc.config_path)
    try:
        future = utcnow() + timedelta(minutes=5)
        dead_local = f"{socket.gethostname()}:999999999:dead"
        _running(ctx, "C00001", dead_local, future)  # this machine, process gone
        _running(ctx, "C00005", "elsewhere:1:x", utcnow() - timedelta(seconds=1))  # expired
        _running(ctx, "C00006", "elsewhere:2:y", future)  # alive elsewhere: keep
        assert Worker(ctx).recover() == 2
        with ctx.state.connect() as c:
            rows = {r.record_id: r.status for r in c.execute(sa.select(S.messages))}
        assert rows == {"C00001": "pending", "C00005": "pending", "C00006": "running"}
    finally:
        ctx.close()


def test_concurrent_workers_never_share_a_message(sc: Scenario) -> None:
    sc.sync()
    ctx = ServiceContext.open(sc.config_path)
    try:
        ids = list(sc.erp_rows())
        with ctx.state.begin() as c:
            ctx.state.enqueue(c, "customers", "source", [(i, "upsert", None) for i in ids])
        claimed: list[list[int]] = []
        barrier = threading.Barrier(4)

        def claim() -> None:
            barrier.wait()
            got: list[int] = []
            while True:
                with ctx.state.begin() as c:
                    msgs = ctx.state.claim(c, "customers", 7, worker=make_worker_id())
                if not msgs:
                    break
                got.extend(m.id for m in msgs)
            claimed.append(got)

        threads = [threading.Thread(target=claim) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        flat = [i for g in claimed for i in g]
        assert len(flat) == len(set(flat)) == len(ids)
    finally:
        ctx.close()


@pytest.mark.postgresql
def test_target_down_messages_wait_unspent_then_all_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fresh_database("postgresql", tmp_path, "crm") as crm_url:
        proxy = Proxy(5432)
        proxy.start()
        via_proxy = crm_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        via_proxy += "?connect_timeout=2"
        url_e = f"sqlite:///{tmp_path / 'erp.db'}"
        sc = Scenario(tmp_path, url_e, via_proxy, monkeypatch=monkeypatch)
        try:
            sc.seed(60, crm_existing=5)
            sc.sync()
            ctx = ServiceContext.open(sc.config_path)
            try:
                sched = Scheduler(ctx)
                worker = Worker(ctx, probe_initial_s=0.2, probe_cap_s=0.5)
                proxy.stop()
                ctx.connectors["crm"].close()  # drop pooled connections: the port is shut
                renamed = {f"C{i:05d}": f"Outage {i}" for i in (0, 1, 5, 6, 10, 11)}
                for k, v in renamed.items():
                    sc.erp_update(k, name=v)
                with ctx.state.begin() as c:
                    c.execute(sa.insert(S.link_state).values(link="customers",
                                                              next_run_at=utcnow()))
                assert sched.run_once() == ["customers"]  # captures from the ERP
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    worker.run_once()
                    time.sleep(0.05)
                with ctx.state.connect() as c:
                    dbg = [(m.status, m.attempts, m.last_error) for m in
                           c.execute(sa.select(S.messages)).all()]
                assert "customers" in worker.paused, dbg
                with ctx.state.connect() as c:
                    msgs = c.execute(sa.select(S.messages)).all()
                assert msgs and all(m.attempts == 0 for m in msgs)  # no attempt spent
                assert all(m.status in ("pending", "running") for m in msgs)
                proxy.start()
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    worker.run_once()
                    with ctx.state.connect() as c:
                        if not ctx.state.queue_counts(c):
                            break
                    time.sleep(0.1)
                sc.crm.dispose()  # the test's own pooled connections died with the proxy
                crm = sc.crm_rows()
                for k, v in renamed.items():
                    assert crm[k]["name"] == v
                assert "customers" not in worker.paused
            finally:
                ctx.close()
        finally:
            proxy.stop()
            sc.close()


def test_disabled_link_is_neither_scheduled_nor_drained(sc: Scenario) -> None:
    sc.sync()
    clock = Clock()
    ctx = ServiceContext.open(sc.config_path, clock=clock)
    try:
        with ctx.state.begin() as c:
            ctx.state.set_link_enabled(c, "customers", False, actor="test", now=clock.now)
            ctx.state.request_run(c, "customers", now=clock.now)
            ctx.state.enqueue(c, "customers", "source", [("C00001", "upsert", None)])
        assert Scheduler(ctx).run_once() == []
        assert Worker(ctx).run_once() == 0
        with ctx.state.begin() as c:
            ctx.state.set_link_enabled(c, "customers", True, actor="test", now=clock.now)
        assert Scheduler(ctx).run_once() == ["customers"]
        assert Worker(ctx).run_once() >= 1
    finally:
        ctx.close()


def test_scheduler_prunes_old_webhook_ids(sc: Scenario) -> None:
    clock = Clock()
    ctx = ServiceContext.open(sc.config_path, clock=clock)
    try:
        with ctx.state.begin() as c:
            for wid, at in (("old", clock.now - timedelta(hours=1)), ("new", clock.now)):
                c.execute(sa.insert(S.webhook_deliveries).values(
                    system="erp", webhook_id=wid, received_at=at))
        assert Scheduler(ctx).run_once() == []
        with ctx.state.connect() as c:
            ids = set(c.execute(sa.select(S.webhook_deliveries.c.webhook_id)).scalars())
        assert ids == {"new"}
    finally:
        ctx.close()


def test_quota_defers_the_rest_to_the_next_window_and_drops_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url_e = f"sqlite:///{tmp_path / 'erp.db'}"
    url_c = f"sqlite:///{tmp_path / 'crm.db'}"
    sc = Scenario(tmp_path, url_e, url_c, monkeypatch=monkeypatch, batch=5)
    try:
        sc.seed()
        sc.sync()
        text = sc.config_path.read_text().replace(
            "    url: " + url_c, "    url: " + url_c + "\n    quota: {calls: 30, per: 1h}"
        )
        sc.config_path.write_text(text)
        active = [k for k, v in sc.erp_rows().items() if v["contract_status"] == "active"]
        for k in active:
            sc.erp_update(k, name=f"Budgeted {k}")
        clock = Clock()
        ctx = ServiceContext.open(sc.config_path, clock=clock)
        try:
            with ctx.state.begin() as c:
                ctx.state.request_run(c, "customers", now=clock.now)
            assert Scheduler(ctx).run_once() == ["customers"]
            worker = Worker(ctx)
            while worker.run_once():
                pass
            st = ctx.quota.status("crm")
            assert st is not None and st.remaining == 0 and st.used >= 30
            assert worker.quota_waiting == {"customers": "crm"}
            done = sum(1 for k in active if sc.crm_rows()[k]["name"] == f"Budgeted {k}")
            assert 0 < done < len(active)  # part done, the rest waits
            with ctx.state.connect() as c:
                waiting = c.execute(sa.select(S.messages)).all()
            assert waiting and all(m.status == "pending" and m.attempts == 0 for m in waiting)
            windows = 0
            while True:
                clock.now += timedelta(hours=1)  # the next window
                windows += 1
                while worker.run_once():
                    pass
                with ctx.state.connect() as c:
                    if not ctx.state.queue_counts(c):
                        break
                assert windows < 50
            crm = sc.crm_rows()
            assert all(crm[k]["name"] == f"Budgeted {k}" for k in active)  # none dropped
            assert windows >= 1
        finally:
            ctx.close()
    finally:
        sc.close()


def test_quota_rate_paces_calls_per_second_and_drops_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url_e = f"sqlite:///{tmp_path / 'erp.db'}"
    url_c = f"sqlite:///{tmp_path / 'crm.db'}"
    sc = Scenario(tmp_path, url_e, url_c, monkeypatch=monkeypatch, batch=5)
    try:
        sc.seed()
        sc.sync()
        text = sc.config_path.read_text().replace(
            "    url: " + url_c,
            "    url: " + url_c + "\n    quota: {calls: 100000, per: 24h, rate: 4}",
        )
        sc.config_path.write_text(text)
        active = [k for k, v in sc.erp_rows().items() if v["contract_status"] == "active"]
        for k in active:
            sc.erp_update(k, name=f"Paced {k}")
        clock = Clock()
        start = clock.now
        ctx = ServiceContext.open(sc.config_path, clock=clock)
        try:
            with ctx.state.begin() as c:
                ctx.state.request_run(c, "customers", now=clock.now)
            assert Scheduler(ctx).run_once() == ["customers"]
            worker = Worker(ctx)
            steps = waited = 0
            batch_calls = 0
            while True:
                with ctx.state.connect() as c:
                    if not ctx.state.queue_counts(c):
                        break
                before = ctx.quota.status("crm").used
                if worker.run_once():
                    batch_calls = max(batch_calls, ctx.quota.status("crm").used - before)
                    # A batch spent the burst: nothing more until the clock moves on.
                    if worker.run_once() == 0:
                        st = ctx.quota.status("crm")
                        assert st is not None and st.rate == 4 and st.rate_wait_s > 0
                        assert worker.quota_waiting == {"customers": "crm"}
                        waited += 1
                clock.now += timedelta(milliseconds=250)
                steps += 1
                assert steps < 2000
            assert waited > 0
            elapsed = (clock.now - start).total_seconds()
            used = ctx.quota.status("crm").used
            # Average rate held: one second's burst plus at most one batch over.
            assert used <= 4 * (elapsed + 1) + batch_calls
            assert used > 4 * elapsed * 0.5  # and it did not stall either
            crm = sc.crm_rows()
            assert all(crm[k]["name"] == f"Paced {k}" for k in active)  # none dropped
        finally:
            ctx.close()
    finally:
        sc.close()
