"""Apply: turn a batch of changed records into target writes and one state commit.

A batch is four steps (``Applier.apply``), in this order of effects:

1. gather: the state (identities, erasures, trigger memory, claimed matches)
   on one connection, and both systems' records; nothing is written;
2. decide (``engine.decide``, pure): each record's outcome and the writes;
   the batch's new records are converted column by column first (the bulk
   path of a migration page, ``_convert_creates``), any other record one by one;
3. write: the target (and the source for backward fields) in batches; fields
   a system refused become ``rejected``;
4. record: identities + shadows, outcomes, timeline entries, finished
   messages and, during a migration, the scan position, in ONE state
   transaction; then waiting timeline notes are delivered.

A crash after 3 and before 4 leaves the messages (or the scan position)
where they were, so the batch runs again: updates rewrite the same values
(the merge then finds both sides equal), and creates are found again by the
link's match keys instead of being made twice.

Over 500 lines on purpose: the four steps of a batch share one set of pending writes;
the pure decisions live in decide.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from crmsync.connectors.base import Connector
from crmsync.engine.capture import queue_failed
from crmsync.engine.decide import (
    Decisions,
    Gathered,
    apply_refusals,
    decide,
    related_ref,
)
from crmsync.engine.link import CompiledLink
from crmsync.engine.merge import UNCONVERTED, convert_column, create_columns
from crmsync.engine.retry import RetryPolicy
from crmsync.engine.rules.memory import note_written
from crmsync.engine.tally import BatchResult, RunTally, WorkItem, outcome_status
from crmsync.engine.trigger import seen_values
from crmsync.model import Action, Outcome, Record, RecordRef, Side
from crmsync.state.log import CREATED_FROM_PAIR
from crmsync.state.store import Identity, StateStore, dumps, utcnow
from crmsync.state.timeline import HEADLINES, activity_text

log = logging.getLogger(__name__)

@dataclass(slots=True)
class _Read:
    """What the gather step read: the decisions' input and the batch's bookkeeping."""

    data: Gathered
    # which pair each message belongs to (a failed pair fails its messages)
    msg_pair: dict[int, str] = field(default_factory=dict)
    unpaired: list[str] = field(default_factory=list)  # target ids crmsync never paired
    erased: list[str] = field(default_factory=list)  # source ids of erased pairs
    met: set[str] = field(default_factory=set)  # counted before in this run
    # trigger memory to save: what was seen of each record
    seen_rows: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # never-paired source records to match (not deleted, passing the filter)
    new_ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Written:
    """The write step's results: source id -> error of each pair whose write failed."""

    failed_pairs: dict[str, str] = field(default_factory=dict)


class Applier:
    """Applies batches for one link; one instance per run."""

    # Convert a batch's creates column by column (False: one record at a time,
    # the reference the bulk path is tested against).
    bulk: bool = True

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
        self.ssystem = source_system
        self.tsystem = target_system
        self.sprefix = RecordRef.prefix(source_system, self.sobj)
        self.tprefix = RecordRef.prefix(target_system, self.tobj)
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
        res = BatchResult()
        read = self._gather(items, pre_read, tally)
        for rid in read.unpaired:
            # A target record crmsync never paired: nothing flows back from it.
            res.note(f"target:{rid}", "unpaired")
        for sid in read.erased:
            res.note(sid, "erased")
        decisions = decide(
            self.link,
            read.data,
            refs=self.refs,
            target_system=self.tsystem,
            converted=self._convert_creates(read) if self.bulk else None,
        )
        written = self._write(decisions)
        self._record(
            items,
            read,
            decisions,
            written,
            res,
            tally=tally,
            on_commit=on_commit,
            failures_to_queue=failures_to_queue,
        )
        return res

    # -- 1. gather -------------------------------------------------------
    def _gather(
        self, items: list[WorkItem], pre_read: dict[str, Record] | None, tally: RunTally | None
    ) -> _Read:
        """Read everything the batch needs: the state on one connection (held
        across the systems' reads, which decide what to look up next)."""
        link = self.link
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
            read = _Read(Gathered(pairs, {}))
            for it in items:
                if it.side is Side.SOURCE:
                    if it.message_id is not None:
                        read.msg_pair[it.message_id] = it.record_id
                    continue
                ident = ident_t.get(it.record_id)
                if ident is None:
                    read.unpaired.append(it.record_id)
                    continue
                pairs.setdefault(ident.source_id, ident)
                if it.message_id is not None:
                    read.msg_pair[it.message_id] = ident.source_id

            # GDPR: a pair touching an erased record is never synced again (a stale
            # source must not write personal values back); its messages end as done.
            read.erased = self.state.erased_pairs(c, self.sprefix, self.tprefix, pairs)
            for sid in read.erased:
                del pairs[sid]
            if tally is not None:
                read.met = tally.met(self.state, self.sprefix, [*pairs, *read.erased], c)

            records: dict[str, Record] = dict(pre_read) if pre_read else {}
            need = [sid for sid in pairs if sid not in records]
            if need:
                records.update(self.source.read(self.sobj, need))
            g = read.data
            g.records = records

            if link.trigger is not None:
                g.pairs, g.waiting = self._fire(c, pairs, records, read.seen_rows)

            read.new_ids = new_ids = [
                sid
                for sid, ident in g.pairs.items()
                if ident is None
                and sid in records
                and not link.is_deleted(records[sid].values)
                and link.accepts(records[sid].values)
            ]
            if link.matches:
                g.matched, g.ambiguous = self._match(c, new_ids, records)

            tids = [i.target_id for i in g.pairs.values() if i is not None and i.target_id]
            tids.extend(g.matched.values())
            g.targets = self.target.read(self.tobj, tids) if tids else {}

            # GDPR: related records (a deal's person) that were erased are never
            # written through a ref again, whatever the source still holds.
            g.erased_related = self._erased_related(c, g.targets)
        return read

    def _convert_creates(self, read: _Read) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        """The bulk path of a page of new records: their create values and shadows
        converted column by column (``create_columns``), for ``decide`` to take
        instead of converting each record. Records it cannot convert, and every
        other case (a match, a refusal, a delete, a filter), are decided one by
        one as always, in the batch's order; the writes and the state rows are
        then the same steps for all."""
        link, g = self.link, read.data
        if not link.config.create:
            return {}
        ids = [s for s in read.new_ids if s not in g.matched and s not in g.ambiguous]
        if not ids:
            return {}
        records = g.records
        extra = [(mp.target, mp.source, mp.forward) for mp in link.matches]
        made = create_columns(link.plans, extra, [records[s].values for s in ids])
        return {sid: m for sid, m in zip(ids, made, strict=True) if m is not None}

    def _fire(
        self,
        c: sa.Connection,
        pairs: dict[str, Identity | None],
        records: dict[str, Record],
        seen_rows: list[tuple[str, dict[str, Any]]],
    ) -> tuple[dict[str, Identity | None], dict[str, Identity | None]]:
        """Split the pairs into those whose trigger fires now and those waiting;
        note what was seen of all."""
        link = self.link
        assert link.trigger is not None
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

    def _match(
        self, c: sa.Connection, new_ids: list[str], records: dict[str, Record]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Pair new source records with existing target records by the match keys."""
        if not new_ids:
            return {}, {}
        mps = self.link.matches
        # Converted column by column; a key that does not convert matches nothing.
        cols = [convert_column(mp.forward, [records[s].values.get(mp.source) for s in new_ids])
                for mp in mps]
        # The records whose keys are all filled (an empty key matches nothing).
        if len(cols) == 1:
            kept = [
                (sid, (v,)) for sid, v in zip(new_ids, cols[0], strict=True)
                if v is not None and v is not UNCONVERTED and v != ""
            ]
        else:
            kept = [
                (sid, conv) for sid, conv in zip(new_ids, zip(*cols, strict=True), strict=True)
                if not any(v is None or v is UNCONVERTED or v == "" for v in conv)
            ]
        if not kept:
            return {}, {}
        first_values = [conv[0] for _, conv in kept]
        found = self.target.find(self.tobj, mps[0].target, list(dict.fromkeys(first_values)))
        by_key: dict[tuple[Any, ...], list[str]] = {}
        for r in found:
            k = tuple(mp.canon(r.values.get(mp.target)) for mp in mps)
            by_key.setdefault(k, []).append(r.id)
        if not by_key:
            return {}, {}  # nothing in the target has these keys: all new (a plain page)
        keys = {
            sid: tuple(mp.canon(v) for mp, v in zip(mps, conv, strict=True)) for sid, conv in kept
        }
        candidates = list({tid for ids in by_key.values() for tid in ids})
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

    def _erased_related(self, c: sa.Connection, targets: dict[str, Record]) -> set[str]:
        if not self.refs or not targets:
            return set()
        refs = {
            r for trec in targets.values() for ref in self.refs
            if (r := related_ref(self.tsystem, self.refs, trec, ref)) is not None
        }
        return self.state.erased_refs(c, refs) if refs else set()

    # -- 3. write --------------------------------------------------------
    def _write(self, d: Decisions) -> _Written:
        """Make the decided writes; a record whose write failed becomes ``failed``,
        fields a system refused become ``rejected`` (``apply_refusals``)."""
        t_errors: dict[str, str] = {}
        s_errors: dict[str, str] = {}
        # Written without some fields the system refused: key -> field -> reason.
        t_refused: dict[str, dict[str, str]] = {}
        s_refused: dict[str, dict[str, str]] = {}
        created: list[str | None] = []
        if self.dry_run:
            created = [None] * len(d.creates)
        else:
            if d.creates or d.target_updates or d.target_deletes:
                wr = self.target.write(
                    self.tobj, d.creates, d.target_updates, d.target_deletes,
                    keep=[mp.target for mp in self.link.matches],
                )
                created, t_errors, t_refused = wr.created, wr.errors, wr.refused
            if d.source_updates:
                ws = self.source.write(self.sobj, (), d.source_updates, ())
                s_errors, s_refused = ws.errors, ws.refused

        written = _Written()
        key_of = {pl.source: pl.key for pl in self.link.plans}
        systems = {"target": self.tsystem, "source": self.ssystem}
        for p in d.pending:
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
                written.failed_pairs[p.source_id] = err
                p.save_identity = False
            elif t_refused or s_refused:
                tkey = f"create:{p.create_index}" if p.create_index is not None else p.target_id
                wrote_target = p.create_index is not None or p.target_write
                apply_refusals(
                    p,
                    t_refused.get(tkey or "", {}) if wrote_target else {},
                    s_refused.get(p.source_id, {}) if p.source_write else {},
                    key_of=key_of,
                    systems=systems,
                )
        return written

    # -- 4. record -------------------------------------------------------
    def _record(
        self,
        items: list[WorkItem],
        read: _Read,
        d: Decisions,
        written: _Written,
        res: BatchResult,
        *,
        tally: RunTally | None,
        on_commit: Callable[[sa.Connection], None] | None,
        failures_to_queue: bool,
    ) -> None:
        """Count and log every outcome; save identities, outcomes, timeline entries
        and finish the messages in one state transaction (not on a dry run)."""
        name = self.link.name
        failed_pairs = written.failed_pairs
        identity_rows: list[dict[str, Any]] = []
        outcome_rows: list[dict[str, Any]] = []
        activity_rows: list[dict[str, Any]] = []
        now = utcnow()
        at = self.state.ts(now)
        for p in d.pending:
            out = p.outcome
            res.outcomes.append(out)
            res.count(out)
            saved = False
            # A new pair's create is logged as the pair's values (kept by the pair).
            new_pair = out.action is Action.CREATED and read.data.pairs.get(p.source_id) is None
            if p.save_identity and p.shadow is not None and not self.dry_run:
                saved = True
                identity_rows.append(
                    {
                        "source_id": p.source_id,
                        "target_id": p.target_id,
                        "shadow": p.shadow,
                        "source_version": p.source_version,
                        "target_version": p.target_version,
                        "deleted": p.deleted,
                        "first_shadow": "" if new_pair else None,
                    }
                )
            again = p.source_id in read.met and not (
                p.create_index is not None
                or p.target_write
                or p.source_write
                or p.deleted
                or out.action is Action.FAILED
            )  # met before in this run and nothing written now: logged already
            if out.action is not Action.UNCHANGED and not out.quiet and not again:
                if out.action is Action.CREATED and saved:
                    fields_json = (
                        CREATED_FROM_PAIR if new_pair else dumps({"created": p.shadow})
                    )
                else:
                    fields_json = dumps([f.to_json() for f in out.fields])
                outcome_rows.append(self._outcome_row(out, at, fields_json))
                if out.target_id and not self.dry_run:
                    self._activity_row(
                        out, read.data.targets.get(out.target_id), now, activity_rows,
                        outcome_rows[-1],
                    )

        for mid, sid in read.msg_pair.items():
            if sid in failed_pairs:
                res.failed_messages[mid] = failed_pairs[sid]
        if tally is not None:
            tally.settle(res, read.met)
        if self.dry_run:
            return
        done = [
            it.message_id
            for it in items
            if it.message_id is not None and it.message_id not in res.failed_messages
        ]
        t_writes, s_writes = (
            self._rule_writes(d, failed_pairs) if self.state.rule_watch else ({}, {})
        )
        if t_writes and (self.tsystem, self.tobj) in self.state.rule_watch:
            self._read_back(d, t_writes)
        with self.state.begin(durable=False) as c:  # a lost commit re-runs the batch
            self.state.save_identities(c, name, identity_rows)
            # Rules watching the written records take these writes as seen (no echo).
            note_written(self.state, c, self.tsystem, self.tobj, t_writes)
            note_written(self.state, c, self.ssystem, self.sobj, s_writes)
            # A record whose write failed keeps its old seen state, so it fires again.
            self.state.save_trigger_seen(
                c, name, [(sid, v) for sid, v in read.seen_rows if sid not in failed_pairs]
            )
            self.state.add_outcomes(c, outcome_rows)
            self.state.add_activities(c, activity_rows)
            if done:
                self.state.finish_messages(c, done, self.worker)
            if failures_to_queue:
                for sid, err in failed_pairs.items():
                    queue_failed(self.state, c, name, sid, err, retry=self.retry, now=now)
            if on_commit is not None:
                on_commit(c)
        if activity_rows and self.activities:
            self._notes_waiting = True
        if self._notes_waiting:
            self.deliver_activities()

    @staticmethod
    def _rule_writes(
        d: Decisions, failed: dict[str, str]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """What this batch wrote, per record: target id -> values, source id -> values."""
        tupd, supd = dict(d.target_updates), dict(d.source_updates)
        t: dict[str, dict[str, Any]] = {}
        s: dict[str, dict[str, Any]] = {}
        for p in d.pending:
            if p.source_id in failed:
                continue
            if p.create_index is not None and p.target_id:
                t[p.target_id] = d.creates[p.create_index]
            elif p.target_write and p.target_id in tupd:
                t[p.target_id] = tupd[p.target_id]
            if p.source_write and p.source_id in supd:
                s[p.source_id] = supd[p.source_id]
        return t, s

    def _read_back(self, d: Decisions, t_writes: dict[str, dict[str, Any]]) -> None:
        """Records this batch created, as the target holds them now (its defaults
        included), for the rules watching them: a created record is crmsync's own
        write as a whole, never a change a rule fires on."""
        made = [p.target_id for p in d.pending
                if p.create_index is not None and p.target_id in t_writes]
        if not made:
            return
        try:
            back = self.target.read(self.tobj, [t for t in made if t])
        except Exception as exc:  # the written values stand in for them
            log.warning("link %s: created records not read back for rules: %s",
                        self.link.name, exc)
            return
        for tid, rec in back.items():
            t_writes[tid] = {**rec.values, **t_writes.get(tid, {})}

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

    def _activity_row(
        self,
        out: Outcome,
        trec: Record | None,
        now: Any,
        rows: list[dict[str, Any]],
        outcome_row: dict[str, Any],
    ) -> None:
        """The timeline row of the target record, when its outcome's entry needs one:
        to be delivered into the target, or naming related records it reached
        (their refs are not in the outcome). Otherwise the outcome is the entry."""
        if out.action not in HEADLINES:
            return
        related: dict[str, tuple[str, str]] = {}
        if trec is not None:
            for ref, obj in self.refs.items():
                rid = trec.values.get(ref)
                if rid is not None:
                    related[ref] = (obj, str(rid))
        if not related and not self.activities:
            return
        row = {
            "link": out.link,
            "record_ref": self.tprefix + str(out.target_id),
            "at": now,
            "kind": out.action.value,
            # '': rendered from the outcome when read (and when delivered)
            "text": activity_text(out, self.sprefix + (out.source_id or ""), related)
            if related else "",
            "deliver": self.activities,
            # The source record too, so its timeline (log --record) shows it.
            "mentions": f" {self.sprefix}{out.source_id} " + "".join(
                f"{RecordRef(self.tsystem, obj, rid)} " for obj, rid in related.values()
            ),
            "outcome_id": None,  # set by add_outcomes
        }
        outcome_row["timeline"] = row
        rows.append(row)

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

