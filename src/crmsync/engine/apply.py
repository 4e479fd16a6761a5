"""Apply: turn a batch of changed records into target writes and one state commit.

Order of effects for a batch, and why a crash between any two is harmless:

1. read both sides and the state (nothing written);
2. write the target (and the source for backward fields) in batches;
3. commit identities + shadows, outcomes, finished messages and, during a
   migration, the scan position — in ONE state transaction.

A crash after 2 and before 3 leaves the messages (or the scan position)
where they were, so the batch runs again: updates rewrite the same values
(the merge then finds both sides equal), and creates are found again by the
link's match keys instead of being made twice.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from crmsync.connectors.base import Connector
from crmsync.convert import to_json
from crmsync.engine.activity import activity_text
from crmsync.engine.link import CompiledLink
from crmsync.engine.merge import create_values, merge
from crmsync.engine.retry import RetryPolicy
from crmsync.engine.trigger import seen_values
from crmsync.model import (
    Action,
    FieldOutcome,
    FieldStatus,
    Outcome,
    Record,
    Side,
)
from crmsync.state.store import Identity, StateStore, dumps, utcnow

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WorkItem:
    side: Side
    record_id: str
    message_id: int | None = None


@dataclass(slots=True)
class BatchResult:
    counts: Counter[str] = field(default_factory=Counter)
    outcomes: list[Outcome] = field(default_factory=list)
    # message ids whose record failed, with the reason
    failed_messages: dict[int, str] = field(default_factory=dict)
    # Per record (its source id; ``target:ID`` for an unpaired target record) the
    # counts it added, so a run that meets a record twice (a migrated record read
    # again by the capture) can count it once (see RunTally).
    records: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    def note(self, record: str, *keys: str) -> None:
        for k in keys:
            self.counts[k] += 1
        self.records.append((record, keys))

    def count(self, out: Outcome) -> None:
        self.note(out.source_id or f"target:{out.target_id}", *count_keys(out))


# Outcomes that are not logged: a record the run meets again with one of these
# after its migration scan is the scan's record again (see RunTally).
_UNLOGGED = frozenset({("unchanged",)})


@dataclass(slots=True)
class RunTally:
    """What one run has counted, so each record is counted (and logged) once per run.

    A run meets a record more than once: in two drain batches, or in its
    migration scan and again in the drain (the capture re-reads the records
    the scan wrote, and the lookback overlap). ``seen`` holds the records the
    drain counted (bounded by the changes captured, never the table size); the
    scan's logged records are found in the log by run id; a record the scan
    found unchanged is not logged, so an unchanged drain outcome after a scan is
    taken as that record again.
    """

    run_id: int | None
    seen: set[str] = field(default_factory=set)
    scanned: bool = False  # a migration scan ran earlier in this run
    # When the run began: a message that failed in it is not claimed again in it,
    # however short its back-off (a record fails, is counted and logged once per run).
    started: datetime | None = None

    def met(self, state: StateStore, prefix: str, rids: list[str]) -> set[str]:
        """The records of ``rids`` this run has counted already."""
        met = {r for r in rids if r in self.seen}
        if self.scanned and self.run_id is not None:
            refs = [prefix + r for r in rids if r not in met]
            if refs:
                met |= {r[len(prefix):] for r in state.logged_in_run(self.run_id, refs)}
        return met

    def settle(self, res: BatchResult, met: set[str]) -> None:
        """Drop from ``res``'s counts the records this run had counted already."""
        for rid, keys in res.records:
            if rid in met or (self.scanned and keys in _UNLOGGED):
                for k in keys:
                    res.counts[k] -= 1
                    if not res.counts[k]:
                        del res.counts[k]
            self.seen.add(rid)


@dataclass(slots=True)
class _Pending:
    """A decided record waiting for the write results."""

    source_id: str
    target_id: str | None
    outcome: Outcome
    shadow: dict[str, Any] | None
    source_version: str | None
    target_version: str | None
    deleted: bool = False
    create_index: int | None = None
    target_write: bool = False
    source_write: bool = False
    save_identity: bool = True
    # The shadow before this pass: a field the system refused goes back to it.
    base: dict[str, Any] | None = None


# Shadow entry remembering which fields were refused and why, so a value that
# stays unconvertible is reported once, not on every re-read.
REJECTED_KEY = "~rejected"
# Shadow entry: side ("target"/"source") -> field -> the (canonical) value that
# system refused to take, so an unchanged refused value is not sent again on
# every re-read.
REFUSED_KEY = "~refused"


def _remember_rejections(shadow: dict[str, Any], fields: list[FieldOutcome]) -> None:
    rejected = {f.field: f.reason for f in fields if f.status is FieldStatus.REJECTED}
    if rejected:
        shadow[REJECTED_KEY] = rejected
    else:
        shadow.pop(REJECTED_KEY, None)


def _hold_refused(m: Any, base: dict[str, Any], key_of: dict[str, str]) -> None:
    """A value a system refused last time and still the one to write is not sent
    again: the field stays rejected with the same reason, so an unchanged record
    stays quiet. Any other value of that field is tried (and forgotten here).
    ``key_of`` maps a source field to its shadow key."""
    refused = {side: dict(vals) for side, vals in base[REFUSED_KEY].items()}
    reasons = base.get(REJECTED_KEY, {})
    for f in m.fields:
        held = refused.get(f.side or "", {})
        if f.field not in held:
            continue
        if f.status is FieldStatus.UPDATED and f.new == held[f.field]:
            target = f.side == "target"
            (m.target_updates if target else m.source_updates).pop(f.field, None)
            key = f.field if target else key_of.get(f.field, f.field)
            if key in base:
                m.shadow[key] = base[key]
            else:
                m.shadow.pop(key, None)
            f.status = FieldStatus.REJECTED
            f.reason = reasons.get(f.field, f"refused by the {f.side}")
        else:
            del held[f.field]
    refused = {side: vals for side, vals in refused.items() if vals}
    if refused:
        m.shadow[REFUSED_KEY] = refused
    else:
        m.shadow.pop(REFUSED_KEY, None)


def _v(version: Any) -> str | None:
    return None if version is None else str(version)


class Applier:
    """Applies batches for one link; one instance per run."""

    def __init__(
        self,
        link: CompiledLink,
        state: StateStore,
        source: Connector,
        target: Connector,
        *,
        source_system: str,
        target_system: str,
        run_id: int | None,
        dry_run: bool = False,
        worker: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.link = link
        self.state = state
        self.source = source
        self.target = target
        self.sobj = link.config.source_object
        self.tobj = link.config.target_object
        self.tsystem = target_system
        self.sprefix = f"{source_system}.{self.sobj}:"
        self.tprefix = f"{target_system}.{self.tobj}:"
        self.run_id = run_id
        self.dry_run = dry_run
        self.worker = worker
        self.retry = retry or RetryPolicy()
        self.activities = not dry_run and target.capabilities.activities
        # Whether notes may be waiting for delivery: checked once at the start (a
        # backlog from an earlier run), then only after new ones or a failed try,
        # so a quiet batch costs no extra state query.
        self._notes_waiting = self.activities
        self.refs = target.refs(self.tobj)

    # ------------------------------------------------------------------
    def apply(
        self,
        items: list[WorkItem],
        *,
        pre_read: dict[str, Record] | None = None,
        on_commit: Callable[[sa.Connection], None] | None = None,
        failures_to_queue: bool = False,
        tally: RunTally | None = None,
    ) -> BatchResult:
        """Apply ``items``; ``pre_read`` holds source records already read (a scan page).

        ``on_commit`` runs inside the state transaction (to advance a scan
        position with the results). With ``failures_to_queue`` records whose
        write failed become queue messages, so a migration's failures are
        retried and listed like any other. With ``tally`` a record the run has
        counted already is not counted again, nor logged again unless written.
        """
        link = self.link
        res = BatchResult()
        name = link.name
        src_ids: list[str] = list(
            dict.fromkeys(i.record_id for i in items if i.side is Side.SOURCE)
        )
        tgt_ids: list[str] = list(
            dict.fromkeys(i.record_id for i in items if i.side is Side.TARGET)
        )

        with self.state.connect() as c:
            ident_s = self.state.identities_by_source(c, name, src_ids) if src_ids else {}
            ident_t = self.state.identities_by_target(c, name, tgt_ids) if tgt_ids else {}

        pairs: dict[str, Identity | None] = {sid: ident_s.get(sid) for sid in src_ids}
        # which pair each message belongs to (a failed pair fails its messages)
        msg_pair: dict[int, str] = {}
        for it in items:
            if it.side is Side.SOURCE:
                if it.message_id is not None:
                    msg_pair[it.message_id] = it.record_id
                continue
            ident = ident_t.get(it.record_id)
            if ident is None:
                # A target record crmsync never paired: nothing flows back from it.
                res.note(f"target:{it.record_id}", "unpaired")
                continue
            pairs.setdefault(ident.source_id, ident)
            if it.message_id is not None:
                msg_pair[it.message_id] = ident.source_id

        # GDPR: a pair touching an erased record is never synced again (a stale
        # source must not write personal values back); its messages end as done.
        with self.state.connect() as c:
            erased = self.state.erased_pairs(c, self.sprefix, self.tprefix, pairs)
        for sid in erased:
            del pairs[sid]
            res.note(sid, "erased")
        met: set[str] = set()
        if tally is not None:
            met = tally.met(self.state, self.sprefix, [*pairs, *erased])

        records: dict[str, Record] = dict(pre_read) if pre_read else {}
        need = [sid for sid in pairs if sid not in records]
        if need:
            records.update(self.source.read(self.sobj, need))

        seen_rows: list[tuple[str, dict[str, Any]]] = []
        waiting: dict[str, Identity | None] = {}
        if link.trigger is not None:
            pairs, waiting = self._fire(pairs, records, seen_rows)

        new_ids = [
            sid
            for sid, ident in pairs.items()
            if ident is None
            and sid in records
            and not link.is_deleted(records[sid].values)
            and link.accepts(records[sid].values)
        ]
        matched, ambiguous = self._match(new_ids, records) if link.matches else ({}, {})

        tids = [i.target_id for i in pairs.values() if i is not None and i.target_id]
        tids.extend(matched.values())
        targets = self.target.read(self.tobj, tids) if tids else {}

        # GDPR: related records (a deal's person) that were erased are never written
        # through a ref again, whatever the source still holds.
        erased_related = self._erased_related(targets)

        decided: list[_Pending] = []
        for sid, ident in waiting.items():
            decided.append(
                _not_synced(
                    name, sid, ident, Action.WAITING,
                    "not synced: its trigger condition did not become true now",
                )
            )
        creates: list[dict[str, Any]] = []
        t_updates: list[tuple[str, dict[str, Any]]] = []
        t_deletes: list[str] = []
        s_updates: list[tuple[str, dict[str, Any]]] = []

        for sid, ident in pairs.items():
            rec = records.get(sid)
            if rec is None or link.is_deleted(rec.values):
                self._decide_delete(sid, ident, rec, decided, t_updates, t_deletes)
                continue
            if not link.accepts(rec.values):
                decided.append(
                    _not_synced(
                        name, sid, ident, Action.FILTERED,
                        "not synced: does not pass the link's filter",
                    )
                )
                continue
            if ident is None:
                tid = matched.get(sid)
                if tid is None:
                    if sid in ambiguous:
                        out = Outcome(name, sid, None, Action.REJECTED, message=ambiguous[sid])
                        decided.append(
                            _Pending(sid, None, out, None, None, None, save_identity=False)
                        )
                        continue
                    if not link.config.create:
                        out = Outcome(
                            name,
                            sid,
                            None,
                            Action.SKIPPED,
                            message="no matching target record, and the link does not create",
                        )
                        decided.append(
                            _Pending(sid, None, out, None, None, None, save_identity=False)
                        )
                        continue
                    values, shadow, fouts = create_values(link.plans, rec.values)
                    err = self._add_match_values(values, rec.values)
                    if err:
                        out = Outcome(name, sid, None, Action.REJECTED, fouts, message=err)
                        decided.append(
                            _Pending(sid, None, out, None, None, None, save_identity=False)
                        )
                        continue
                    _remember_rejections(shadow, fouts)
                    out = Outcome(name, sid, None, Action.CREATED, fouts, created=shadow)
                    decided.append(
                        _Pending(
                            sid, None, out, shadow, _v(rec.version), None, create_index=len(creates)
                        )
                    )
                    creates.append(values)
                    continue
                trec = targets.get(tid)
                if trec is None:  # matched a moment ago, gone now: the next change retries
                    out = Outcome(
                        name,
                        sid,
                        None,
                        Action.SKIPPED,
                        message=f"the matching target record {tid} disappeared while pairing",
                    )
                    decided.append(
                        _Pending(sid, None, out, None, None, None, save_identity=False)
                    )
                    continue
                base: dict[str, Any] | None = None
                first = True
            else:
                tid = ident.target_id
                trec = targets.get(tid) if tid else None
                if trec is None:
                    out = Outcome(
                        name,
                        sid,
                        tid,
                        Action.SKIPPED,
                        message="the target record no longer exists; not re-created",
                    )
                    decided.append(_Pending(sid, tid, out, None, None, None, save_identity=False))
                    continue
                base = ident.shadow
                first = False
            newer = _newer(rec.version, trec.version)
            m = merge(link.plans, rec.values, trec.values, base, link.policy, newer)
            if self.refs:
                self._hold_refs(trec, m, base, erased_related)
            if base and REFUSED_KEY in base:
                _hold_refused(m, base, {pl.source: pl.key for pl in link.plans})
            wrote = bool(m.target_updates or m.source_updates)
            _remember_rejections(m.shadow, m.fields)
            # A first pairing is `matched`, with whatever it wrote in its fields: one
            # action per record, so each count is one action or status in the log.
            action = Action.MATCHED if first else (Action.UPDATED if wrote else Action.UNCHANGED)
            if action is Action.UNCHANGED and any(
                f.status is FieldStatus.REJECTED for f in m.fields
            ):
                # Nothing written, but a value was refused: logged and counted as
                # such (quiet below when it is the same refusal as last time).
                action = Action.REJECTED
            out = Outcome(name, sid, tid, action, m.fields, matched=first)
            if (
                not wrote
                and ident is not None
                and m.shadow.get(REJECTED_KEY) == ident.shadow.get(REJECTED_KEY)
            ):
                # The same value was refused for the same reason last time:
                # nothing new to tell, so this pass is quiet.
                out.quiet = True
            p = _Pending(sid, tid, out, m.shadow, _v(rec.version), _v(trec.version), base=base)
            if m.target_updates:
                t_updates.append((tid, m.target_updates))  # type: ignore[arg-type]
                p.target_write = True
            if m.source_updates:
                s_updates.append((sid, m.source_updates))
                p.source_write = True
            if not wrote and not first and ident is not None:
                # Quiet pass: touch state only if the shadow or versions moved.
                p.save_identity = (
                    m.shadow != ident.shadow
                    or p.source_version != ident.source_version
                    or p.target_version != ident.target_version
                    or ident.deleted
                )
            decided.append(p)

        # -- writes ------------------------------------------------------
        t_errors: dict[str, str] = {}
        s_errors: dict[str, str] = {}
        # Written without some fields the system refused: key -> field -> reason.
        t_refused: dict[str, dict[str, str]] = {}
        s_refused: dict[str, dict[str, str]] = {}
        created: list[str | None] = []
        if self.dry_run:
            created = [None] * len(creates)
        else:
            if creates or t_updates or t_deletes:
                wr = self.target.write(
                    self.tobj, creates, t_updates, t_deletes,
                    keep=[mp.target for mp in self.link.matches],
                )
                created, t_errors, t_refused = wr.created, wr.errors, wr.refused
            if s_updates:
                ws = self.source.write(self.sobj, (), s_updates, ())
                s_errors, s_refused = ws.errors, ws.refused

        # -- results -------------------------------------------------------
        identity_rows: list[dict[str, Any]] = []
        outcome_rows: list[dict[str, Any]] = []
        activity_rows: list[dict[str, Any]] = []
        failed_pairs: dict[str, str] = {}
        now = utcnow()
        at = self.state.ts(now)
        for p in decided:
            out = p.outcome
            err: str | None = None
            if p.create_index is not None:
                new_id = created[p.create_index] if p.create_index < len(created) else None
                if new_id is None and not self.dry_run:
                    err = t_errors.get(f"create:{p.create_index}", "create failed")
                else:
                    p.target_id = out.target_id = new_id
            elif p.target_write or p.deleted:
                err = t_errors.get(p.target_id or "")
            if err is None and p.source_write:
                err = s_errors.get(p.source_id)
            if err is not None:
                out.action = Action.FAILED
                out.message = err
                failed_pairs[p.source_id] = err
                p.save_identity = False
            elif t_refused or s_refused:
                tkey = f"create:{p.create_index}" if p.create_index is not None else p.target_id
                wrote_target = p.create_index is not None or p.target_write
                self._refused(
                    p,
                    t_refused.get(tkey or "", {}) if wrote_target else {},
                    s_refused.get(p.source_id, {}) if p.source_write else {},
                )
            res.outcomes.append(out)
            res.count(out)
            shadow_json = None
            if p.save_identity and p.shadow is not None and not self.dry_run:
                # Encoded once: the identity's shadow and a create's log entry share it.
                shadow_json = dumps(p.shadow)
                identity_rows.append(
                    {
                        "source_id": p.source_id,
                        "target_id": p.target_id,
                        "shadow": shadow_json,
                        "source_version": p.source_version,
                        "target_version": p.target_version,
                        "deleted": p.deleted,
                    }
                )
            again = p.source_id in met and not (
                p.create_index is not None
                or p.target_write
                or p.source_write
                or p.deleted
                or out.action is Action.FAILED
            )  # met before in this run and nothing written now: logged already
            if out.action is not Action.UNCHANGED and not out.quiet and not again:
                if out.action is Action.CREATED and shadow_json is not None:
                    fields_json = '{"created":' + shadow_json + "}"
                else:
                    fields_json = dumps([f.to_json() for f in out.fields])
                outcome_rows.append(self._outcome_row(out, at, fields_json))
                if out.target_id and not self.dry_run:
                    self._activity_row(out, targets.get(out.target_id), now, activity_rows)

        for mid, sid in msg_pair.items():
            if sid in failed_pairs:
                res.failed_messages[mid] = failed_pairs[sid]
        if tally is not None:
            tally.settle(res, met)
        if self.dry_run:
            return res
        done = [
            it.message_id
            for it in items
            if it.message_id is not None and it.message_id not in res.failed_messages
        ]
        with self.state.begin() as c:
            self.state.save_identities(c, name, identity_rows)
            # A record whose write failed keeps its old seen state, so it fires again.
            self.state.save_trigger_seen(
                c, name, [(sid, v) for sid, v in seen_rows if sid not in failed_pairs]
            )
            self.state.add_outcomes(c, outcome_rows)
            self.state.add_activities(c, activity_rows)
            if done:
                self.state.finish_messages(c, done, self.worker)
            if failures_to_queue:
                # Due after the first back-off, like any failed message: not again
                # in this run (a record fails, is counted and logged once per run).
                for sid, err in failed_pairs.items():
                    self.state.add_failed(
                        c,
                        name,
                        Side.SOURCE.value,
                        sid,
                        err,
                        max_attempts=self.retry.max_attempts,
                        available_at=now + timedelta(seconds=self.retry.delay(1)),
                    )
            if on_commit is not None:
                on_commit(c)
        if activity_rows and self.activities:
            self._notes_waiting = True
        if self._notes_waiting:
            self.deliver_activities()
        return res

    def _refused(
        self, p: _Pending, target: dict[str, str], source: dict[str, str]
    ) -> None:
        """Fields a system refused at write time become ``rejected`` with its reason;
        the shadow goes back to what it was for them, so it never claims a value
        that was not written (and the next change of the record tries again)."""
        if not target and not source:
            return
        out, shadow = p.outcome, p.shadow
        key_of = {pl.source: pl.key for pl in self.link.plans}
        system = {
            "target": self.tprefix.partition(".")[0],
            "source": self.sprefix.partition(".")[0],
        }

        refused_values: dict[str, dict[str, Any]] = {"target": {}, "source": {}}

        def restore(key: str) -> None:
            if shadow is None:
                return
            if p.base is not None and key in p.base:
                shadow[key] = p.base[key]
            else:
                shadow.pop(key, None)

        if p.create_index is not None:
            for name, why in target.items():
                if shadow is not None:
                    refused_values["target"][name] = shadow.get(name)
                restore(name)
                reason = f"refused by {system['target']}: {why}"
                out.fields.append(FieldOutcome(name, FieldStatus.REJECTED, reason=reason))
        for f in out.fields:
            if f.status not in (FieldStatus.UPDATED, FieldStatus.CONFLICT):
                continue
            why = (target if f.side == "target" else source if f.side == "source" else {}).get(
                f.field
            )
            if why is None:
                continue
            restore(f.field if f.side == "target" else key_of.get(f.field, f.field))
            refused_values[f.side or "target"][f.field] = f.new
            f.status = FieldStatus.REJECTED
            f.reason = f"refused by {system[f.side or 'target']}: {why}"
        if shadow is not None:
            _remember_rejections(shadow, out.fields)
            held = shadow.get(REFUSED_KEY, {})
            merged = {
                side: {**held.get(side, {}), **refused_values[side]}
                for side in ("target", "source")
            }
            merged = {side: vals for side, vals in merged.items() if vals}
            if merged:
                shadow[REFUSED_KEY] = merged
        if out.action is Action.UPDATED and not any(
            f.status in (FieldStatus.UPDATED, FieldStatus.CONFLICT) for f in out.fields
        ):
            # Nothing of it was written: not "updated".
            out.action = Action.MATCHED if out.matched else Action.REJECTED

    def _related_ref(self, trec: Record, ref: str) -> str | None:
        rid = trec.values.get(ref)
        return None if rid is None else f"{self.tsystem}.{self.refs[ref]}:{rid}"

    def _erased_related(self, targets: dict[str, Record]) -> set[str]:
        if not self.refs or not targets:
            return set()
        refs = {
            r for trec in targets.values() for ref in self.refs
            if (r := self._related_ref(trec, ref)) is not None
        }
        with self.state.connect() as c:
            return self.state.erased_refs(c, refs) if refs else set()

    def _hold_refs(
        self, trec: Record, m: Any, base: dict[str, Any] | None, erased: set[str]
    ) -> None:
        """Drop writes through a ref that points nowhere or to an erased record, and
        say so per field: the rest of the record is still written."""
        for ref in self.refs:
            rref = self._related_ref(trec, ref)
            if rref is None:
                why = f"no related {self.refs[ref]} to update ({ref} is empty)"
            elif rref in erased:
                why = f"the related record {rref} was erased (GDPR)"
            else:
                continue
            prefix = f"{ref}."
            for key in [k for k in m.target_updates if k.startswith(prefix)]:
                del m.target_updates[key]
                m.shadow[key] = (base or {}).get(key)
            for f in m.fields:
                if f.field.startswith(prefix) and f.status is FieldStatus.UPDATED:
                    f.status = FieldStatus.REJECTED
                    f.reason = why
                    f.side = None

    def _activity_row(
        self, out: Outcome, trec: Record | None, now: Any, rows: list[dict[str, Any]]
    ) -> None:
        """The timeline entry of the target record, naming related records it reached."""
        related: dict[str, tuple[str, str]] = {}
        if trec is not None:
            for ref, obj in self.refs.items():
                rid = trec.values.get(ref)
                if rid is not None:
                    related[ref] = (obj, str(rid))
        text = activity_text(out, self.sprefix + (out.source_id or ""), related)
        if text is not None:
            rows.append(
                {
                    "link": out.link,
                    "record_ref": self.tprefix + str(out.target_id),
                    "at": now,
                    "kind": out.action.value,
                    "text": text,
                    "deliver": self.activities,
                    # The source record too, so its timeline (log --record) shows it.
                    "mentions": f" {self.sprefix}{out.source_id} " + "".join(
                        f"{self.tsystem}.{obj}:{rid} " for obj, rid in related.values()
                    ),
                }
            )

    def deliver_activities(self, limit: int = 500) -> int:
        """Write waiting timeline entries into the target (Tryton notes).

        After the state commit, so a note never describes a write that was
        rolled back; a crash between the note and its mark repeats that note
        once (at least once, never lost). An unreachable target keeps them
        waiting for the next batch.
        """
        with self.state.connect() as c:
            todo = self.state.undelivered_activities(c, self.link.name, self.tprefix, limit)
        if not todo:
            self._notes_waiting = False
            return 0
        items = [(ref[len(self.tprefix):], text) for _, ref, text in todo]
        try:
            ext: list[str | None] = list(self.target.add_activities(self.tobj, items))
        except Exception as exc:  # a note must never fail the sync itself
            log.warning("link %s: timeline notes not delivered yet: %s", self.link.name, exc)
            return 0
        self._notes_waiting = len(todo) >= limit  # more than one page was waiting
        ext += [None] * (len(todo) - len(ext))
        with self.state.begin() as c:
            self.state.mark_activities_delivered(
                c, [(i, e) for (i, _, _), e in zip(todo, ext, strict=True)], utcnow()
            )
        return len(todo)

    # ------------------------------------------------------------------
    def _fire(
        self,
        pairs: dict[str, Identity | None],
        records: dict[str, Record],
        seen_rows: list[tuple[str, dict[str, Any]]],
    ) -> tuple[dict[str, Identity | None], dict[str, Identity | None]]:
        """Split the pairs into those whose trigger fires now and those waiting;
        note what was seen of all."""
        link = self.link
        assert link.trigger is not None
        with self.state.connect() as c:
            seen = self.state.trigger_seen(c, link.name, [s for s in pairs if s in records])
        kept: dict[str, Identity | None] = {}
        waiting: dict[str, Identity | None] = {}
        for sid, ident in pairs.items():
            rec = records.get(sid)
            if rec is None:
                kept[sid] = ident  # a delete is handled as on any link
                continue
            prev = seen.get(sid)
            now = seen_values(set(link.trigger_fields), rec.values)
            if now != prev:
                seen_rows.append((sid, now))
            if link.trigger(prev, rec.values):
                kept[sid] = ident
            else:
                waiting[sid] = ident
        return kept, waiting

    def _decide_delete(
        self,
        sid: str,
        ident: Identity | None,
        rec: Record | None,
        decided: list[_Pending],
        t_updates: list[tuple[str, dict[str, Any]]],
        t_deletes: list[str],
    ) -> None:
        link = self.link
        if ident is not None and ident.deleted:
            # Its delete was handled before: a re-read is nothing new.
            out = Outcome(link.name, sid, ident.target_id, Action.UNCHANGED, quiet=True)
            decided.append(
                _Pending(sid, ident.target_id, out, None, None, None, save_identity=False)
            )
            return
        if ident is None or not ident.target_id:
            why = (
                "not found at the source and never synced: nothing to do"
                if rec is None
                else "deleted at the source before it was ever synced: nothing to do"
            )
            out = Outcome(link.name, sid, None, Action.SKIPPED, message=why)
            decided.append(_Pending(sid, None, out, None, None, None, save_identity=False))
            return
        tid = ident.target_id
        version = _v(rec.version) if rec is not None else ident.source_version
        if link.on_delete == "ignore":
            out = Outcome(
                link.name,
                sid,
                tid,
                Action.SKIPPED,
                message="deleted at the source; on_delete is ignore",
            )
            decided.append(
                _Pending(sid, tid, out, ident.shadow, version, ident.target_version, deleted=True)
            )
            return
        if link.on_delete == "delete":
            t_deletes.append(tid)
            out = Outcome(
                link.name,
                sid,
                tid,
                Action.DELETED,
                message="deleted at the source; deleted in the target",
            )
            decided.append(_Pending(sid, tid, out, ident.shadow, version, None, deleted=True))
            return
        values = dict(link.delete_values)
        t_updates.append((tid, values))
        shadow = dict(ident.shadow)
        fouts = []
        for k, v in values.items():
            shadow[k] = to_json(v)
            fouts.append(
                FieldOutcome(k, FieldStatus.UPDATED, "target", ident.shadow.get(k), shadow[k])
            )
        out = Outcome(
            link.name,
            sid,
            tid,
            Action.DELETED,
            fouts,
            message="deleted at the source; soft-deleted in the target",
        )
        decided.append(
            _Pending(
                sid,
                tid,
                out,
                shadow,
                version,
                ident.target_version,
                deleted=True,
                target_write=True,
            )
        )

    def _add_match_values(self, values: dict[str, Any], src: dict[str, Any]) -> str | None:
        """New records carry their match key, so a retried create is found, not repeated."""
        for mp in self.link.matches:
            if mp.target in values:
                continue
            try:
                values[mp.target] = mp.forward(src.get(mp.source))
            except ValueError as exc:
                return f"match field {mp.source}: {exc}"
        return None

    def _match(
        self, new_ids: list[str], records: dict[str, Record]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Pair new source records with existing target records by the match keys."""
        if not new_ids:
            return {}, {}
        mps = self.link.matches
        keys: dict[str, tuple[Any, ...]] = {}
        first_values: list[Any] = []
        for sid in new_ids:
            vals = records[sid].values
            try:
                conv = [mp.forward(vals.get(mp.source)) for mp in mps]
            except ValueError:
                continue
            if any(v is None or v == "" for v in conv):
                continue  # an empty key matches nothing
            keys[sid] = tuple(mp.canon(v) for mp, v in zip(mps, conv, strict=True))
            first_values.append(conv[0])
        if not keys:
            return {}, {}
        found = self.target.find(self.tobj, mps[0].target, list(dict.fromkeys(first_values)))
        by_key: dict[tuple[Any, ...], list[str]] = {}
        for r in found:
            k = tuple(mp.canon(r.values.get(mp.target)) for mp in mps)
            by_key.setdefault(k, []).append(r.id)
        candidates = list({tid for ids in by_key.values() for tid in ids})
        with self.state.connect() as c:
            taken = set(self.state.identities_by_target(c, self.link.name, candidates))
        matched: dict[str, str] = {}
        ambiguous: dict[str, str] = {}
        claimed: set[str] = set()
        for sid, k in keys.items():
            free = [t for t in by_key.get(k, []) if t not in taken]
            if len(free) > 1:
                ambiguous[sid] = f"ambiguous match: {len(free)} target records have " + ", ".join(
                    f"{mp.target}={v!r}" for mp, v in zip(mps, k, strict=True)
                )
            elif free:
                if free[0] in claimed:
                    ambiguous[sid] = f"another source record in this batch matched target {free[0]}"
                else:
                    matched[sid] = free[0]
                    claimed.add(free[0])
            elif by_key.get(k):
                ambiguous[sid] = "the matching target record is already paired with another record"
        return matched, ambiguous

    def _outcome_row(self, out: Outcome, now: Any, fields_json: str) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "link": out.link,
            "source_ref": self.sprefix + out.source_id if out.source_id else None,
            "target_ref": self.tprefix + out.target_id if out.target_id else None,
            "action": out.action.value,
            "status": outcome_status(out),
            "fields": fields_json,
            "message": out.message,
            "at": now,
        }


def _not_synced(
    link: str, sid: str, ident: Identity | None, action: Action, why: str
) -> _Pending:
    """A record left alone this pass (filtered, waiting): logged with the reason, its
    pair and state untouched."""
    tid = ident.target_id if ident is not None else None
    out = Outcome(link, sid, tid, action, message=why)
    return _Pending(sid, None, out, None, None, None, save_identity=False)


def _newer(a: Any, b: Any) -> bool | None:
    if a is None or b is None:
        return None
    try:
        return bool(a > b)
    except TypeError:
        return None


def outcome_status(out: Outcome) -> str:
    if out.action is Action.FAILED:
        return "failed"
    if out.action is Action.REJECTED or out.rejected:
        return "rejected"
    if out.conflicts:
        return "conflict"
    if out.action is Action.SKIPPED:
        return "skipped"
    if out.action is Action.FILTERED:
        return "filtered"
    if out.action is Action.WAITING:
        return "waiting"
    return "ok"


def count_keys(out: Outcome) -> tuple[str, ...]:
    """The run counts one outcome adds: its action, and its status when that is
    ``conflict`` (counted as ``conflicts``) or ``rejected``; so every count is what
    ``crmsync log --status X`` finds for the run."""
    if out.quiet:
        return ("unchanged",)
    status = outcome_status(out)
    if status == "conflict":
        return (out.action.value, "conflicts")
    if status == "rejected" and out.action is not Action.REJECTED:
        return (out.action.value, "rejected")
    return (out.action.value,)
