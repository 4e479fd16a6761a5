"""Running rules: baseline, capture, evaluate, act (see the package's docstring).

A rule's queue (``rule:NAME``) holds two kinds of messages: side ``source``
names a watched record that may have changed (fed by link captures and
webhooks in their own transactions, or by the rule's own poll), side
``action`` names a firing whose actions are due. Both are claimed with a
lease, retried and listed as failed like a link's messages.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from crmsync.config.models import Config, RuleConfig
from crmsync.connectors.base import Connector
from crmsync.convert import to_json
from crmsync.engine.retry import RetryPolicy
from crmsync.engine.rules.actions import ActionFailed, Actions, Firing
from crmsync.engine.rules.criteria import When, compile_when, criteria_fields
from crmsync.engine.rules.memory import RULE_PREFIX, note_written, rule_queue, wire
from crmsync.engine.trigger import decoder
from crmsync.errors import CrmsyncError, SystemUnavailable
from crmsync.model import ObjectSpec, Record, RecordRef
from crmsync.state.store import UNREACHABLE, Message, StateStore, dumps, utcnow

__all__ = ["RULE_PREFIX", "CompiledRule", "RuleRunner", "rule_queue"]

# gate(systems): counts the calls made so far; raises QuotaWait when one is spent.
Gate = Callable[[Iterable[str]], None]

BATCH = 200


@dataclass(slots=True)
class CompiledRule:
    name: str
    queue: str
    config: RuleConfig
    spec: ObjectSpec
    when: When
    # the fields whose change counts (all but the key and the change stamp)
    watched: tuple[str, ...]
    decode: Callable[[dict[str, Any]], dict[str, Any]]

    @property
    def systems(self) -> set[str]:
        """Every system the rule reads or acts on (for quotas)."""
        return {self.config.system}


def compile_rule(name: str, rc: RuleConfig, spec: ObjectSpec) -> CompiledRule:
    watched = tuple(f for f in spec.fields if f not in (spec.key, spec.updated_at))
    return CompiledRule(
        name, rule_queue(name), rc, spec, compile_when(rc.when, spec), watched,
        decoder(spec, set(watched) | criteria_fields(rc.when)),
    )


@dataclass(slots=True)
class Seen:
    """The outcome of evaluating one record against one rule."""

    memory: dict[str, Any]  # what to remember now
    changed: list[str]  # fields that changed (empty: nothing new)
    fires: bool


def evaluate(rule: CompiledRule, rec: Record, mem: dict[str, Any] | None) -> Seen:
    """Compare ``rec`` with what the rule saw last (``mem``) and apply the criteria."""
    now = {f: to_json(rec.values.get(f)) for f in rule.watched}
    if mem is None:  # a new record: changed from nothing
        changed = [f for f in rule.watched if now[f] is not None]
        return Seen(now, changed or list(rule.watched), rule.when(None, None, rec.values))
    # Fields the memory lacks (written by crmsync on create, added to the object
    # since) are adopted as they are: no change.
    before = {f: mem.get(f, now[f]) for f in rule.watched}
    changed = [f for f in rule.watched if before[f] != now[f]]
    if not changed:
        return Seen(now, [], False)
    return Seen(now, changed, rule.when(before, rule.decode(before), rec.values))


@dataclass(slots=True)
class RuleReport:
    """What one pass over a rule did (shown with the links' reports)."""

    link: str  # ``rule:NAME``, so tables list it beside the links
    kind: str = "rule"
    status: str = "ok"
    error: str | None = None
    run_id: int | None = None
    counts: Counter[str] = field(default_factory=Counter)
    samples: list[Any] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if v}


class RuleRunner:
    """Runs the rules of one configuration against live connectors and a state store."""

    def __init__(
        self,
        config: Config,
        state: StateStore,
        connectors: Mapping[str, Connector],
        *,
        retry: RetryPolicy,
        worker: str,
        gate: Gate,
        lease_s: float = 60.0,
    ) -> None:
        self.config = config
        self.state = state
        self.connectors = connectors
        self.retry = retry
        self.worker = worker
        self.gate = gate
        self.lease_s = lease_s
        self.actions = Actions(config, state, connectors)
        self._compiled: dict[str, CompiledRule] = {}
        self._baselined: set[str] = set()
        self.run_id: int | None = None
        wire(config, state)

    def compiled(self, name: str) -> CompiledRule:
        if name not in self._compiled:
            rc = self.config.rules[name]
            spec = self.connectors[rc.system].describe(rc.object)
            self._compiled[name] = compile_rule(name, rc, spec)
        return self._compiled[name]

    def enabled(self, names: Iterable[str] | None = None) -> list[str]:
        """Rules switched on (config, then the admin's switch), in config order."""
        overrides = self.state.link_enabled_overrides()
        out = []
        for name, rc in self.config.rules.items():
            if names is not None and name not in names:
                continue
            if overrides.get(rule_queue(name), rc.enabled):
                out.append(name)
        return out

    def for_links(self, links: Iterable[str]) -> list[str]:
        """Rules watching an object of one of ``links``."""
        objs = set()
        for name in links:
            lc = self.config.links[name]
            objs |= {lc.source, lc.target}
        return [n for n, rc in self.config.rules.items() if rc.on in objs]

    # -- a pass -----------------------------------------------------------
    def run(self, name: str, *, capture: bool = True) -> RuleReport:
        """Baseline (once), capture (scheduled rules), evaluate and act on all that is due."""
        from crmsync.engine.quota import QuotaWait

        report = RuleReport(rule_queue(name))
        run_id = report.run_id = self.state.start_run(report.link, "rule")
        try:
            rule = self.compiled(name)
            self.gate(rule.systems)
            self.baseline(rule, report)
            if capture and rule.config.schedule:
                self.capture(rule, report)
            with self.state.begin() as c:
                self.state.recover_running(c, rule.queue, owner_gone=_owner_gone)
            started = utcnow()
            while self.batch(rule, report, retried_before=started):
                self.gate(rule.systems)
        except QuotaWait as exc:
            report.status, report.error = "waiting", exc.user_message
        except SystemUnavailable as exc:
            report.status, report.error = "paused", exc.user_message
        except CrmsyncError as exc:
            report.status, report.error = "error", exc.user_message
        self.state.finish_run(run_id, report.status, report.summary(), report.error)
        return report

    # -- dry run ----------------------------------------------------------------
    def plan(self, name: str, max_samples: int = 5) -> RuleReport:
        """What the rule would do now, writing nothing: the changes waiting for it and
        those its feeds (links, its own poll) would capture, evaluated against what it
        saw last. ``samples`` holds ``(record, changed, [action, ...])``."""
        report = RuleReport(rule_queue(name))
        try:
            rule = self.compiled(name)
            rc = rule.config
            conn = self.connectors[rc.system]
            with self.state.connect() as c:
                base = self.state.get_cursor(c, rule.queue, "source", "baseline")
                ids = dict.fromkeys(self.state.pending_ids(c, rule.queue, "source"))
                cursors = {(lname, side): self.state.get_cursor(c, lname, side, "incremental")
                           for (lname, side), qs in self.state.rule_feeds.items()
                           if rule.queue in qs}
                if rc.schedule:
                    cursors[(rule.queue, "source")] = self.state.get_cursor(
                        c, rule.queue, "source", "incremental")
            if not (base and base.get("done")):
                report.counts["baseline"] = conn.count(rc.object) or 0
                return report  # the first run only remembers what exists
            for saved in cursors.values():
                cursor = saved.get("cursor") if saved else None
                if cursor is None:
                    continue  # a link's first run migrates: its records are no change
                while True:
                    page = conn.read_changes(rc.object, cursor, 500, 0.0)
                    ids.update(dict.fromkeys(r.id for r in page.records))
                    cursor = page.cursor if page.cursor is not None else cursor
                    if not page.more:
                        break
            records = conn.read(rc.object, list(ids)) if ids else {}
            with self.state.connect() as c:
                mem = self.state.trigger_seen(c, rule.queue, list(records))
            for rid, rec in records.items():
                seen = evaluate(rule, rec, mem.get(rid))
                report.counts["evaluated"] += 1
                if seen.fires:
                    report.counts["fired"] += 1
                    if len(report.samples) < max_samples:
                        ref = RecordRef(rc.system, rc.object, rid)
                        report.samples.append((ref, seen.changed, [describe(a) for a in rc.then]))
        except SystemUnavailable as exc:
            report.status, report.error = "paused", exc.user_message
        return report

    # -- service entry points ----------------------------------------------
    def service_batch(self, name: str) -> int:
        """One worker step of a rule: its baseline first (once), then one batch."""
        rule = self.compiled(name)
        report = RuleReport(rule.queue)
        if name not in self._baselined:
            self.baseline(rule, report)
            self._baselined.add(name)
        return self.batch(rule, report)

    def scheduled_capture(self, name: str) -> RuleReport:
        """The scheduler's pass of a rule with a schedule: baseline (once), then poll."""
        from crmsync.engine.quota import QuotaWait

        report = RuleReport(rule_queue(name), kind="capture")
        try:
            rule = self.compiled(name)
            self.gate(rule.systems)
            self.baseline(rule, report)
            self.capture(rule, report)
        except QuotaWait as exc:
            report.status, report.error = "waiting", exc.user_message
        except SystemUnavailable as exc:
            report.status, report.error = "paused", exc.user_message
        return report

    def baseline(self, rule: CompiledRule, report: RuleReport) -> None:
        """The first time a rule runs it reads every existing record and remembers it:
        records that existed before the rule are never fired for. A killed baseline
        resumes at the page it was in."""
        q = rule.queue
        with self.state.connect() as c:
            pos = self.state.get_cursor(c, q, "source", "baseline")
        if pos and pos.get("done"):
            return
        conn = self.connectors[rule.config.system]
        obj = rule.config.object
        if not pos:
            pos = {"after": None, "done": False}
            with self.state.begin() as c:
                if rule.config.schedule:
                    # Placed before the scan: nothing changed during it is missed.
                    self.state.set_cursor(c, q, "source", "incremental",
                                          {"cursor": conn.start_cursor(obj)})
                self.state.set_cursor(c, q, "source", "baseline", pos)
        after = pos.get("after")
        while True:
            self.gate(rule.systems)
            page = conn.scan(obj, after, 500)
            if not page:
                break
            with self.state.begin(durable=False) as c:  # lost: read again
                seen = self.state.trigger_seen(c, q, [r.id for r in page])
                # What is remembered already (crmsync's writes, a change evaluated
                # meanwhile) stands; the rest is taken as it is now.
                rows = [(r.id, {**{f: to_json(r.values.get(f)) for f in rule.watched},
                                **seen.get(r.id, {})})
                        for r in page]
                self.state.save_trigger_seen(c, q, rows)
                after = page[-1].id
                self.state.set_cursor(c, q, "source", "baseline", {"after": after, "done": False})
            report.counts["baseline"] += len(page)
            if len(page) < 500:
                break
        with self.state.begin() as c:
            self.state.set_cursor(c, q, "source", "baseline", {"after": after, "done": True})

    def capture(self, rule: CompiledRule, report: RuleReport) -> None:
        """A scheduled rule polls its object: each page queued with its cursor."""
        q = rule.queue
        conn = self.connectors[rule.config.system]
        obj = rule.config.object
        with self.state.connect() as c:
            saved = self.state.get_cursor(c, q, "source", "incremental")
        cursor = saved.get("cursor") if saved else None
        ocfg = self.config.systems[rule.config.system].objects.get(obj)
        lookback = float(getattr(ocfg, "lookback", 0.0) or 0.0)
        while True:
            page = conn.read_changes(obj, cursor, 500, lookback)
            lookback = 0.0  # only the first page reaches back
            with self.state.begin(durable=False) as c:  # lost: captured again
                self.state.enqueue(c, q, "source", [(r.id, "upsert", None)
                                                    for r in page.records])
                if page.cursor is not None:
                    self.state.set_cursor(c, q, "source", "incremental",
                                          {"cursor": page.cursor})
            report.counts["captured"] += len(page.records)
            cursor = page.cursor if page.cursor is not None else cursor
            if not page.more:
                break

    # -- one batch ----------------------------------------------------------
    def batch(
        self, rule: CompiledRule, report: RuleReport, *, retried_before: datetime | None = None
    ) -> int:
        """Claim a batch of the rule's due messages, evaluate and act; 0 when none."""
        self.run_id = report.run_id
        with self.state.begin(durable=False) as c:  # a lost claim leaves them pending
            msgs = self.state.claim(c, rule.queue, BATCH, worker=self.worker,
                                    lease_s=self.lease_s, retried_before=retried_before)
        if not msgs:
            return 0
        evals = [m for m in msgs if m.side == "source"]
        acts = [m for m in msgs if m.side == "action"]
        try:
            if evals:
                self._evaluate(rule, evals, report)
        except SystemUnavailable as exc:
            self._release(msgs, f"{UNREACHABLE}: {exc.user_message}", spend=False)
            raise
        except Exception as exc:
            self._release(msgs, f"{type(exc).__name__}: {exc}", spend=True)
            raise
        self._act(rule, acts, report)
        return len(msgs)

    def _release(self, msgs: list[Message], error: str, *, spend: bool) -> int:
        if not msgs:
            return 0
        attempt = max(m.attempts for m in msgs) + 1
        delay = self.retry.delay(attempt) if spend else self.retry.initial
        with self.state.begin() as c:
            return self.state.release_messages(
                c, [m.id for m in msgs], available_at=utcnow() + timedelta(seconds=delay),
                error=error, spend_attempt=spend, max_attempts=self.retry.max_attempts,
            )

    def _evaluate(self, rule: CompiledRule, msgs: list[Message], report: RuleReport) -> None:
        """Evaluate the changed records; a firing's actions are queued with it (the
        next batch claims them)."""
        rc = rule.config
        ids = list(dict.fromkeys(m.record_id for m in msgs))
        records = self.connectors[rc.system].read(rc.object, ids)
        now = utcnow()
        with self.state.begin() as c:
            mem = self.state.trigger_seen(c, rule.queue, ids)
            remember: list[tuple[str, dict[str, Any]]] = []
            for rid in ids:
                rec = records.get(rid)
                if rec is None:
                    continue  # gone: nothing to evaluate
                seen = evaluate(rule, rec, mem.get(rid))
                report.counts["evaluated"] += 1
                if seen.changed or rid not in mem:
                    remember.append((rid, seen.memory))
                if not seen.fires:
                    continue
                ref = RecordRef(rc.system, rc.object, rid)
                fid = self.state.add_firing(c, rule.name, str(ref), seen.memory, seen.changed,
                                            now)
                self.state.enqueue(c, rule.queue, "action", [(str(fid), "fire", None)], now=now)
                report.counts["fired"] += 1
                why = ", ".join(seen.changed[:8]) + (" ..." if len(seen.changed) > 8 else "")
                self._log(c, rule, ref, None, "fired", "ok",
                          f"rule {rule.name} fired (changed: {why})", [], now)
            self.state.save_trigger_seen(c, rule.queue, remember)
            self.state.finish_messages(c, [m.id for m in msgs], self.worker)

    def _act(self, rule: CompiledRule, msgs: list[Message], report: RuleReport) -> None:
        """Run each firing's remaining actions, in order; a firing that fails goes back
        to the queue (its finished actions are not run again)."""
        if not msgs:
            return
        with self.state.connect() as c:
            rows = self.state.firings(c, [int(m.record_id) for m in msgs])
        for m in sorted(msgs, key=lambda m: int(m.record_id)):
            row = rows.get(int(m.record_id))
            if row is None:  # erased meanwhile: nothing to do
                with self.state.begin() as c:
                    self.state.finish_messages(c, [m.id], self.worker)
                continue
            f = Firing(int(row["id"]), rule.name, RecordRef.parse(row["record_ref"]),
                       row["record_values"], row["changed"], row["fired_at"], int(row["step"]),
                       row["tried_step"])
            try:
                self._steps(rule, f, report)
            except SystemUnavailable as exc:
                # The other firings go back too: the system is down for them as well.
                rest = [x for x in msgs if int(x.record_id) >= f.id]
                self._release(rest, f"{UNREACHABLE}: {exc.user_message}", spend=False)
                raise
            except (ActionFailed, CrmsyncError) as exc:
                self._failed(rule, f, m, str(exc.user_message if isinstance(exc, CrmsyncError)
                                             else exc), report)
                continue
            except Exception as exc:  # a bug in one action must not stop the others
                self._failed(rule, f, m, f"{type(exc).__name__}: {exc}", report)
                continue
            with self.state.begin(durable=False) as c:
                self.state.finish_messages(c, [m.id], self.worker)

    def _steps(self, rule: CompiledRule, f: Firing, report: RuleReport) -> None:
        steps = rule.config.then
        while f.step < len(steps):
            step = steps[f.step]
            kind = type(step).__name__.removesuffix("Step").lower()
            if kind == "activity" and f.tried_step != f.step:
                # Its effect cannot be undone or detected for sure: note the attempt,
                # so a retry after a crash looks for it before writing again.
                with self.state.begin(durable=False) as c:
                    self.state.firing_step(c, f.id, step=f.step, tried=f.step)
            done = self.actions.run(step, f)
            at = utcnow()
            # Not flushed: a power cut may repeat this action once (a set writes the
            # same values, an activity is found again, a webhook keeps its id).
            with self.state.begin(durable=False) as c:
                if done.wrote and done.target is not None:
                    note_written(self.state, c, done.target.system, done.target.object,
                                 {done.target.id: done.wrote})
                if done.queue is not None:
                    link, side, rid = done.queue
                    self.state.enqueue(c, link, side, [(rid, "upsert", None)])
                self.state.firing_step(c, f.id, step=f.step + 1, tried=None)
                self._log(c, rule, f.record, done.target, done.kind, done.status, done.message,
                          done.fields, at, external=done.external)
            report.counts[f"action_{done.kind}"] += 1
            f.step += 1
            f.tried_step = None

    def _failed(
        self, rule: CompiledRule, f: Firing, m: Message, error: str, report: RuleReport
    ) -> None:
        steps = rule.config.then
        kind = type(steps[f.step]).__name__.removesuffix("Step").lower()
        ended = self._release([m], f"{kind}: {error}", spend=True)
        report.counts["failed"] += 1
        with self.state.begin() as c:
            status = "failed" if ended else "retrying"
            self._log(c, rule, f.record, None, kind, "failed",
                      f"{kind} failed ({status} after attempt {m.attempts + 1}): {error}", [],
                      utcnow())

    def _log(
        self,
        c: sa.Connection,
        rule: CompiledRule,
        record: RecordRef,
        target: RecordRef | None,
        action: str,
        status: str,
        message: str,
        fields: list[dict[str, Any]],
        now: datetime,
        *,
        external: str | None = None,
    ) -> None:
        """An outcome row (``crmsync log``) and a timeline entry on the watched record;
        an activity written into a system also gets an entry on the record it is on,
        with its id there, so an erasure of either record removes it."""
        at = self.state.ts(now)
        self.state.add_outcomes(c, [{
            "run_id": self.run_id,
            "link": rule.queue,
            "source_ref": str(record),
            "target_ref": str(target) if target is not None and target != record else None,
            "action": action,
            "status": status,
            "fields": dumps(fields),
            "message": message,
            "at": at,
        }])
        mentions = f" {target} " if target is not None and target != record else None
        self.state.add_activities(c, [{
            "link": rule.queue,
            "record_ref": str(record),
            "at": now,
            "kind": f"rule {action}",
            "text": f"Rule {rule.name}: {message}",
            "deliver": False,
            "mentions": mentions,
            "outcome_id": None,
        }])
        if external is not None and target is not None:
            self.state.add_activities(c, [{
                "link": rule.queue,
                "record_ref": str(target),
                "at": now,
                "kind": f"rule {action}",
                "text": f"Rule {rule.name}: {message}",
                "deliver": True,
                "delivered_at": now,
                "external_id": external,
                "mentions": f" {record} ",
                "outcome_id": None,
            }])


def describe(step: Any) -> str:
    """One action in words, for ``plan``."""
    kind = type(step).__name__.removesuffix("Step").lower()
    spec = getattr(step, kind)
    if kind == "set":
        vals = ", ".join(f"{k} = {v!r}" for k, v in spec.values.items())
        return f"set {vals}" + (f" via {spec.via}" if spec.via else "")
    if kind == "activity":
        return f"activity {spec.subject!r}" + (f" via {spec.via}" if spec.via else "")
    if kind == "sync":
        return f"sync through {spec}"
    from crmsync.engine.rules.actions import _host

    return f"webhook to {_host(spec.url)}"


def _owner_gone(owner: str | None) -> bool:
    from crmsync.engine.lease import local_owner_gone

    return local_owner_gone(owner)
