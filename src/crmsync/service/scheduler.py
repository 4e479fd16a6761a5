"""The scheduler: runs each link's capture when its schedule (or a request) says so.

Exactly one scheduler is active per state database. On PostgreSQL it holds a
session advisory lock; the others wait and take over if it dies (the lock
goes with its connection). On SQLite the state is one machine's file and one
``serve`` runs the scheduler.

Per link, ``crmsync_link_state.next_run_at`` is when it is due: computed from
the schedule after each run, or set to "now" by an explicit sync request. A
scheduled link that never ran is due at once.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

import sqlalchemy as sa

from crmsync.schedule import parse_schedule
from crmsync.service.context import ServiceContext

log = logging.getLogger("crmsync.scheduler")


class Scheduler:
    def __init__(self, ctx: ServiceContext, *, tick_s: float = 1.0) -> None:
        self.ctx = ctx
        self.tick_s = tick_s
        self._lock_conn: sa.Connection | None = None
        self._last_prune: datetime | None = None
        self.runs = 0

    # -- leadership --------------------------------------------------------
    def is_leader(self) -> bool:
        state = self.ctx.state
        if state.dialect != "postgresql":
            return True
        if self._lock_conn is not None:
            return True
        conn = state.take_scheduler_lock()
        if conn is not None:
            self._lock_conn = conn  # held for as long as this connection lives
            log.info("scheduler is active", extra={"action": "leader"})
            return True
        return False

    def release(self) -> None:
        if self._lock_conn is not None:
            self._lock_conn.close()
            self._lock_conn = None

    # -- scheduling --------------------------------------------------------
    def due(self, now: datetime) -> list[str]:
        with self.ctx.state.connect() as c:
            states = self.ctx.state.link_schedules(c)
        out = []
        for name in self.ctx.engine.link_names():
            st = states.get(name)
            next_at = st.next_run_at if st is not None else None
            if next_at is not None:
                if next_at <= now:
                    out.append(name)
            elif self.ctx.config.links[name].schedule and (st is None or st.last_run_at is None):
                out.append(name)
        return out

    def prune(self, now: datetime) -> int:
        """Forget webhook ids too old to replay (their signed timestamp is refused anyway)."""
        before = now - timedelta(seconds=2 * self.ctx.webhook_tolerance_s)
        with self.ctx.state.begin() as c:
            return self.ctx.state.prune_webhook_deliveries(c, before)

    def run_once(self) -> list[str]:
        """Run every due link's capture; returns the links run."""
        if not self.is_leader():
            return []
        now = self.ctx.clock()
        if self._last_prune is None or now - self._last_prune >= timedelta(minutes=10):
            self._last_prune = now
            self.prune(now)
        ran = []
        for name in self.due(now):
            # The engine counts the calls and stops at a spent quota (status
            # "waiting"; a migration keeps its page position).
            report = self.ctx.engine.capture_link(name)
            if report.status == "waiting":
                continue  # still due: goes on once the window reopens
            sched_text = self.ctx.config.links[name].schedule
            next_at = parse_schedule(sched_text).next_after(now) if sched_text else None
            with self.ctx.state.begin() as c:
                self.ctx.state.save_scheduled_run(c, name, now, next_at)
            self.runs += 1
            ran.append(name)
            log.info(
                "link captured",
                extra={"action": "capture", "link": name, "status": report.status,
                       "captured": report.counts.get("captured", 0), "next_run_at": str(next_at)},
            )
        if self.ctx.config.rules:
            ran += self._rules(now)
        return ran

    def _rules(self, now: datetime) -> list[str]:
        """Rules with a schedule poll their object when it says (kept like a link's)."""
        runner = self.ctx.engine.rules
        with self.ctx.state.connect() as c:
            states = self.ctx.state.link_schedules(c)
        ran = []
        for name in runner.enabled():
            sched_text = self.ctx.config.rules[name].schedule
            if not sched_text:
                continue
            key = f"rule:{name}"
            st = states.get(key)
            next_at = st.next_run_at if st is not None else None
            if next_at is not None and next_at > now:
                continue
            report = runner.scheduled_capture(name)
            if report.status == "waiting":
                continue
            with self.ctx.state.begin() as c:
                self.ctx.state.save_scheduled_run(
                    c, key, now, parse_schedule(sched_text).next_after(now)
                )
            ran.append(key)
            if report.counts.get("captured"):
                self.ctx.wake.set()
        return ran

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    self.run_once()
                except Exception:
                    log.exception("scheduler pass failed", extra={"action": "error"})
                stop.wait(self.tick_s)
        finally:
            self.release()
