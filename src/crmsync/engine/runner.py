"""A run of a link: migrate (first run or --full), capture changes, drain the queue.

capture -> queue -> apply:

* The first run of a link is its initial migration: the source is scanned in
  key order, page by page; each page is applied and its position committed
  with the identities it produced, so a killed run resumes at the page it was
  in. Before the scan starts the incremental cursor is placed at the current
  high-water mark, so nothing changed during the scan is missed.
* Later runs capture (``engine.capture``): each page of changes since the
  cursor is queued in the same state transaction that advances the cursor. A
  lookback overlap is queued again and found unchanged by apply (no write).
* Draining claims due messages (one per record), applies them, and finishes
  them in the apply's transaction.
* Quotas: before every page and batch the calls made so far are counted
  against the systems' budgets (``engine.quota``); when one is spent the run
  stops there with status ``waiting`` (positions and messages kept) and goes
  on in a later run, once the window reopens.

A dry run (``plan``) does the same reads and decisions and writes nothing,
neither to the systems nor to the state database.

Over 500 lines on purpose: a run is one sequence (gate, migrate, capture, drain, report);
capture and apply themselves live in capture.py and apply.py.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from crmsync.config.models import Config
from crmsync.connectors.base import Connector
from crmsync.engine.apply import Applier
from crmsync.engine.capture import Capture
from crmsync.engine.lease import local_owner_gone, make_worker_id
from crmsync.engine.link import CompiledLink, compile_link
from crmsync.engine.options import sync_options
from crmsync.engine.quota import QuotaGuard, QuotaMeter, QuotaWait
from crmsync.engine.retry import RetryPolicy
from crmsync.engine.status import enabled_links, require_link
from crmsync.engine.tally import BatchResult, RunTally, WorkItem
from crmsync.errors import SystemUnavailable
from crmsync.model import Action, Outcome, Side
from crmsync.state.store import UNREACHABLE, StateStore, utcnow

# progress(link, phase, done, total)
Progress = Callable[[str, str, int, int | None], None]

# The counts every run reports, in the order tables show them.
SUMMARY_KEYS = (
    "created",
    "updated",
    "unchanged",
    "matched",
    "conflicts",
    "rejected",
    "deleted",
    "skipped",
    "filtered",
    "failed",
)


# Outcomes that change nothing: not shown as sample changes.
_NOT_CHANGES = frozenset({Action.UNCHANGED, Action.FILTERED, Action.WAITING})


@dataclass(slots=True)
class LinkReport:
    """What one run did. Each record is counted once per run, under the first
    outcome it had in the run; every counted record but a plain ``unchanged``
    one has a logged outcome of that run (``crmsync log``)."""

    link: str
    kind: str
    status: str = "ok"
    counts: Counter[str] = field(default_factory=Counter)
    samples: list[Outcome] = field(default_factory=list)
    error: str | None = None
    # What this run has counted, so the drain counts a record once (see RunTally).
    tally: RunTally = field(default_factory=lambda: RunTally(None), repr=False)

    def add(self, res: BatchResult, max_samples: int) -> None:
        self.counts.update(res.counts)
        if len(self.samples) < max_samples:
            for o in res.outcomes:
                if (
                    o.action not in _NOT_CHANGES
                    and not o.quiet
                    and len(self.samples) < max_samples
                ):
                    self.samples.append(o)

    def summary(self) -> dict[str, int]:
        return {k: self.counts.get(k, 0) for k in SUMMARY_KEYS} | {
            k: v for k, v in self.counts.items() if k not in SUMMARY_KEYS and v
        }


@contextmanager
def _frozen_heap() -> Iterator[None]:
    """Objects alive now are left out of garbage collection until the block ends."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Engine:
    """Runs links of one configuration against live connectors and a state store."""

    def __init__(
        self,
        config: Config,
        state: StateStore,
        connectors: dict[str, Connector],
        *,
        retry: RetryPolicy | None = None,
        progress: Progress | None = None,
        quota: QuotaGuard | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.connectors = connectors
        self.capture = Capture(config, state)
        self.retry = retry or RetryPolicy()
        self.progress = progress or (lambda *a: None)
        self._compiled: dict[str, CompiledLink] = {}
        self.worker_id = make_worker_id()
        self.lease_s = 60.0
        self.use_quota(quota or QuotaGuard(config, state, utcnow))
        self._rules: Any = None
        if config.rules:
            from crmsync.engine.rules.memory import wire

            wire(config, state)  # captures feed the rules from the first page on

    @property
    def rules(self) -> Any:
        """The rules' runner (``crmsync.engine.rules.engine.RuleRunner``), made when first used."""
        if self._rules is None:
            from crmsync.engine.rules.engine import RuleRunner

            self._rules = RuleRunner(
                self.config, self.state, self.connectors, retry=self.retry,
                worker=self.worker_id, gate=self.quota_gate, lease_s=self.lease_s,
            )
        return self._rules

    # -- quotas ----------------------------------------------------------
    def use_quota(self, guard: QuotaGuard, *, wait_rate: bool = True) -> None:
        """Count calls against ``guard`` (a service shares its guard and clock).

        ``wait_rate``: a run sleeps out a rate limit (seconds); a service's
        threads do not sleep, they treat it as a wait and look again later.
        """
        self.quota = guard
        self.meter = QuotaMeter(guard, self.connectors)
        self._quota_local = threading.local()
        self.quota_sleep: Callable[[float], None] | None = time.sleep if wait_rate else None

    def settle_quota(self) -> None:
        """Count the calls this thread made since the last count."""
        self.meter.settle()

    def quota_gate(self, systems: Iterable[str], *, start: bool = False) -> None:
        """Count the calls made so far; raise ``QuotaWait`` when a system's window is
        spent. Called before every page and batch.

        A rate limit is slept out by a run; a service thread never sleeps: it does
        not start work (``start``) but finishes work begun, whose excess then makes
        the following work wait (the worker asks before every batch).
        """
        local = self._quota_local
        if start:
            local.grace = False  # a new run: no step of an earlier one carries over
        elif getattr(local, "grace", False):
            # The first step of a run always goes: it includes reading the systems'
            # structure, and a run that stopped right after it would never progress.
            local.grace = False
            return
        while (st := self.meter.blocked(systems)) is not None:
            if st.remaining <= 0 or (start and self.quota_sleep is None):
                raise QuotaWait(st)
            if self.quota_sleep is None:
                return
            self.quota_sleep(st.rate_wait_s)
        local.grace = start

    def compiled(self, name: str) -> CompiledLink:
        if name not in self._compiled:
            lc = self.config.links[name]
            ssys, tsys = (
                self.config.systems[lc.source_system],
                self.config.systems[lc.target_system],
            )
            self._compiled[name] = compile_link(
                name,
                lc,
                self.connectors[lc.source_system].describe(lc.source_object),
                self.connectors[lc.target_system].describe(lc.target_object),
                ssys.objects.get(lc.source_object),
                tsys.objects.get(lc.target_object),
            )
        return self._compiled[name]

    def link_names(self, only: str | None = None) -> list[str]:
        if only is not None:
            require_link(self.config, only)
            return [only]
        return enabled_links(self.config, self.state.link_enabled_overrides())

    # ------------------------------------------------------------------
    def sync(
        self,
        only: str | None = None,
        *,
        full: bool = False,
        dry_run: bool = False,
        max_samples: int = 5,
    ) -> list[LinkReport]:
        reports: list[Any] = []
        names = self.link_names(only)
        for name in names:
            reports.append(
                self.sync_link(name, full=full, dry_run=dry_run, max_samples=max_samples)
            )
        if self.config.rules:
            if dry_run:
                runner = self.rules
                wanted = runner.for_links(names) if only is not None else None
                reports += [runner.plan(n, max_samples) for n in runner.enabled(wanted)]
            else:
                reports += self.run_rules(names if only is not None else None)
        return reports

    def run_rules(self, links: list[str] | None = None) -> list[Any]:
        """A pass over the enabled rules (those watching ``links``' objects when given);
        links their ``sync`` actions queued records for are drained again, so "sync
        now" is done when the command returns."""
        runner = self.rules
        names = runner.enabled(runner.for_links(links) if links is not None else None)
        reports: list[Any] = []
        for name in names:
            reports.append(runner.run(name))
        synced = {
            step.sync
            for name in names
            for step in self.config.rules[name].then
            if getattr(step, "sync", None)
        }
        for link in self.link_names():
            if link in synced and self._has_due(link):
                reports.append(self.sync_link(link))
        return reports

    def _has_due(self, link: str) -> bool:
        with self.state.connect() as c:
            return any(self.state.pending_ids(c, link, side.value) for side in Side)

    def sync_link(
        self, name: str, *, full: bool = False, dry_run: bool = False, max_samples: int = 5
    ) -> LinkReport:
        lc = self.config.links[name]
        src, tgt = self.connectors[lc.source_system], self.connectors[lc.target_system]
        with self.state.connect() as c:
            mig = self.state.get_cursor(c, name, Side.SOURCE.value, "migration")
        migrating = full or not (mig and mig.get("done"))
        kind = "migration" if migrating and not full else ("full" if full else "incremental")
        report = LinkReport(name, kind)
        run_id = None if dry_run else self.state.start_run(name, kind)
        report.tally.run_id = run_id
        report.tally.started = utcnow()
        try:
            if not dry_run:
                self.quota_gate((lc.source_system, lc.target_system), start=True)
            try:
                # Compiling reflects both systems: inside the try, so a system
                # that is down pauses the run instead of failing it.
                link = self.compiled(name)
            except SystemUnavailable:
                if not migrating and not dry_run:
                    # The other side may answer: its changes are queued now and
                    # wait durably for the one that is down.
                    self._capture(name, src, Side.SOURCE, report, run_id)
                raise
            # Options first: a record may hold an option the lookup table lacks yet.
            report.counts.update(sync_options(name, lc, src, tgt, dry_run=dry_run))
            applier = Applier(
                link,
                self.state,
                src,
                tgt,
                source_system=lc.source_system,
                target_system=lc.target_system,
                run_id=run_id,
                dry_run=dry_run,
                worker=self.worker_id,
                retry=self.retry,
            )
            if migrating:
                self._migrate(link, src, tgt, applier, report, full, dry_run, max_samples)
            if dry_run:
                if not migrating:
                    self._plan_changes(link, src, tgt, applier, report, max_samples)
            else:
                self._capture(name, src, Side.SOURCE, report, run_id)
                if lc.reads_target:
                    self._capture(name, tgt, Side.TARGET, report, run_id)
                self._drain(link, applier, report, max_samples)
        except QuotaWait as exc:
            report.status = "waiting"
            report.error = exc.user_message
        except SystemUnavailable as exc:
            report.status = "paused"
            report.error = exc.user_message
        except Exception as exc:
            report.status = "error"
            report.error = f"{type(exc).__name__}: {exc}"
            if run_id is not None:
                self.state.finish_run(run_id, report.status, report.summary(), report.error)
            raise
        finally:
            if not dry_run:
                self.settle_quota()
        if run_id is not None:
            self.state.finish_run(run_id, report.status, report.summary(), report.error)
        return report

    # -- service entry points -------------------------------------------
    def applier(self, name: str, run_id: int | None = None) -> Applier:
        """An applier for workers draining the queue of a link."""
        link = self.compiled(name)
        lc = link.config
        return Applier(
            link,
            self.state,
            self.connectors[lc.source_system],
            self.connectors[lc.target_system],
            source_system=lc.source_system,
            target_system=lc.target_system,
            run_id=run_id,
            worker=self.worker_id,
            retry=self.retry,
        )

    def capture_link(self, name: str, kind: str = "scheduled") -> LinkReport:
        """One scheduled pass without draining: migrate if never done, then capture.

        Workers apply what it queues. A migration applies its pages directly
        (the source table is its own queue), so it runs here.
        """
        lc = self.config.links[name]
        src, tgt = self.connectors[lc.source_system], self.connectors[lc.target_system]
        with self.state.connect() as c:
            mig = self.state.get_cursor(c, name, Side.SOURCE.value, "migration")
        migrating = not (mig and mig.get("done"))
        report = LinkReport(name, "migration" if migrating else kind)
        try:
            # Before the run is recorded: a spent quota is no run, just a later one.
            self.quota_gate(
                {lc.source_system}
                | ({lc.target_system} if migrating or lc.reads_target else set()),
                start=True,
            )
        except QuotaWait as exc:
            report.status, report.error = "waiting", exc.user_message
            return report
        run_id = self.state.start_run(name, report.kind)
        try:
            with suppress(SystemUnavailable):  # the target may be down: workers wait for it
                report.counts.update(sync_options(name, lc, src, tgt, dry_run=False))
            if migrating:
                # Compiling reflects both systems: inside the try, so a system
                # that is down pauses the run instead of failing it.
                link = self.compiled(name)
                applier = self.applier(name, run_id)
                self._migrate(link, src, tgt, applier, report, False, False, 0)
            self._capture(name, src, Side.SOURCE, report, run_id)
            if lc.reads_target:
                self._capture(name, tgt, Side.TARGET, report, run_id)
        except QuotaWait as exc:
            report.status = "waiting"
            report.error = exc.user_message
        except SystemUnavailable as exc:
            report.status = "paused"
            report.error = exc.user_message
        except Exception as exc:
            report.status = "error"
            report.error = f"{type(exc).__name__}: {exc}"
        self.settle_quota()
        self.state.finish_run(run_id, report.status, report.summary(), report.error)
        return report

    # ------------------------------------------------------------------
    def _migrate(
        self,
        link: CompiledLink,
        src: Connector,
        tgt: Connector,
        applier: Applier,
        report: LinkReport,
        full: bool,
        dry_run: bool,
        max_samples: int,
    ) -> None:
        name, sobj = link.name, link.config.source_object
        with self.state.connect() as c:
            mig = self.state.get_cursor(c, name, Side.SOURCE.value, "migration")
        if full or not mig:
            mig = {"after": None, "done": False}
            if not dry_run:
                # Position the incremental cursors before the scan reads anything.
                with self.state.begin() as c:
                    self.capture.place_cursors(
                        c, name, self._capture_sides(link, src, tgt), full=full
                    )
                    self.state.set_cursor(c, name, Side.SOURCE.value, "migration", mig)
        after = mig.get("after")
        done = 0
        batch = link.batch_size
        total = src.count(sobj)
        systems = (link.config.source_system, link.config.target_system)
        # The scan makes many short-lived objects per page; with what lived before
        # it frozen, the collector's passes do not walk the whole process again
        # and again (~10% of a migration). Thawed after, so nothing is kept.
        with _frozen_heap():
            while True:
                if not dry_run:
                    self.quota_gate(systems)  # the position so far is committed: resumable
                page = src.scan(sobj, after, batch)
                if not page:
                    break
                last = page[-1].id
                items = [WorkItem(Side.SOURCE, r.id) for r in page]
                pre = {r.id: r for r in page}

                def commit(c: Any, last: str = last) -> None:
                    self.state.set_cursor(
                        c, name, Side.SOURCE.value, "migration", {"after": last, "done": False}
                    )

                res = applier.apply(
                    items,
                    pre_read=pre,
                    on_commit=None if dry_run else commit,
                    failures_to_queue=True,
                )
                report.add(res, max_samples)
                report.tally.scanned = True
                done += len(page)
                self.progress(name, "migrate", done, total)
                after = last
                if len(page) < batch:
                    break
        if not dry_run:
            with self.state.begin() as c:
                self.state.set_cursor(
                    c, name, Side.SOURCE.value, "migration", {"after": after, "done": True}
                )

    @staticmethod
    def _capture_sides(
        link: CompiledLink, src: Connector, tgt: Connector
    ) -> list[tuple[Side, Connector, str]]:
        sides = [(Side.SOURCE, src, link.config.source_object)]
        if link.reads_target:
            sides.append((Side.TARGET, tgt, link.config.target_object))
        return sides

    def _capture(
        self, name: str, conn: Connector, side: Side, report: LinkReport, run_id: int | None
    ) -> None:
        """Queue one side's changes since its cursor (``Capture.poll``)."""
        self.capture.poll(
            name,
            conn,
            side,
            gate=self.quota_gate,
            counts=report.counts,
            tally=report.tally,
            run_id=run_id,
        )

    def _drain(
        self, link: CompiledLink, applier: Applier, report: LinkReport, max_samples: int
    ) -> None:
        with self.state.begin() as c:
            self.state.recover_running(c, link.name, owner_gone=local_owner_gone)
        done = 0
        systems = (link.config.source_system, link.config.target_system)
        while True:
            self.quota_gate(systems)  # messages not claimed yet stay queued
            if not (n := self.drain_batch(link, applier, report, max_samples)):
                break
            done += n
            self.progress(link.name, "apply", done, None)

    def drain_batch(
        self, link: CompiledLink, applier: Applier, report: LinkReport, max_samples: int = 0
    ) -> int:
        """Claim one batch of due messages, apply it, finish or release it; 0 when none."""
        name = link.name
        with self.state.begin(durable=False) as c:  # a lost claim leaves them pending
            msgs = self.state.claim(
                c,
                name,
                link.batch_size,
                worker=self.worker_id,
                lease_s=self.lease_s,
                retried_before=report.tally.started,
            )
        if not msgs:
            return 0
        items = [WorkItem(Side(m.side), m.record_id, m.id) for m in msgs]
        try:
            res = applier.apply(items, tally=report.tally)
        except SystemUnavailable as exc:
            # Unreachable: wait without spending attempts; the caller pauses.
            with self.state.begin() as c:
                self.state.release_messages(
                    c,
                    [m.id for m in msgs],
                    available_at=utcnow() + timedelta(seconds=self.retry.initial),
                    error=f"{UNREACHABLE}: {exc.user_message}",
                    spend_attempt=False,
                    max_attempts=self.retry.max_attempts,
                )
            raise
        except Exception as exc:
            with self.state.begin() as c:
                self.state.release_messages(
                    c,
                    [m.id for m in msgs],
                    available_at=utcnow() + timedelta(seconds=self.retry.delay(1)),
                    error=f"{type(exc).__name__}: {exc}",
                    spend_attempt=True,
                    max_attempts=self.retry.max_attempts,
                )
            raise
        if res.failed_messages:
            by_msg = {m.id: m for m in msgs}
            with self.state.begin() as c:
                for mid, err in res.failed_messages.items():
                    attempt = by_msg[mid].attempts + 1
                    report.counts["message_failed"] += self.state.release_messages(
                        c,
                        [mid],
                        available_at=utcnow() + timedelta(seconds=self.retry.delay(attempt)),
                        error=err,
                        spend_attempt=True,
                        max_attempts=self.retry.max_attempts,
                    )
        report.add(res, max_samples)
        return len(msgs)

    def _plan_changes(
        self,
        link: CompiledLink,
        src: Connector,
        tgt: Connector,
        applier: Applier,
        report: LinkReport,
        max_samples: int,
    ) -> None:
        """Dry run of an incremental pass: waiting messages plus changes since the cursors."""
        name = link.name
        items: dict[tuple[Side, str], None] = {}
        for side, conn, _obj in self._capture_sides(link, src, tgt):
            with self.state.connect() as c:
                for rid in self.state.pending_ids(c, name, side.value):
                    items[(side, rid)] = None
                saved = self.state.get_cursor(c, name, side.value, "incremental")
            cursor = saved.get("cursor") if saved else None
            for page in self.capture.pages(link.config, conn, side, cursor):
                for r in page.records:
                    items[(side, r.id)] = None
                report.counts["skipped"] += len(page.unreadable)
        # A pair changed on both sides is one decision, as in a real run.
        tids = [rid for side, rid in items if side is Side.TARGET]
        with self.state.connect() as c:
            paired = self.state.identities_by_target(c, name, tids) if tids else {}
        work: dict[tuple[Side, str], None] = {}
        for side, rid in items:
            if side is Side.TARGET and rid in paired:
                work[(Side.SOURCE, paired[rid].source_id)] = None
            else:
                work[(side, rid)] = None
        report.counts["captured"] += len(items)
        keys = list(work)
        for i in range(0, len(keys), link.batch_size):
            chunk = keys[i : i + link.batch_size]
            res = applier.apply([WorkItem(side, rid) for side, rid in chunk], tally=report.tally)
            report.add(res, max_samples)
