"""What a batch and a run count: the items a batch takes, its result, and the
per-run tally that counts (and logs) each record once per run."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa

from crmsync.model import Action, Outcome, Side
from crmsync.state.store import StateStore


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

    def met(
        self,
        state: StateStore,
        prefix: str,
        rids: list[str],
        c: sa.Connection | None = None,
    ) -> set[str]:
        """The records of ``rids`` this run has counted already (``c``: read on it)."""
        met = {r for r in rids if r in self.seen}
        if self.scanned and self.run_id is not None:
            refs = [prefix + r for r in rids if r not in met]
            if refs:
                if c is None:
                    with state.connect() as own:
                        logged = state.run_logged_refs(own, self.run_id, refs)
                else:
                    logged = state.run_logged_refs(c, self.run_id, refs)
                met |= {r[len(prefix):] for r in logged}
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


def outcome_status(out: Outcome) -> str:
    if out.action is Action.FAILED:
        return "failed"
    # ``fields`` first: a create's (the hot path) is usually empty, and then it
    # has neither rejected nor conflicting fields to count.
    if out.action is Action.REJECTED or (out.fields and out.rejected):
        return "rejected"
    if out.fields and out.conflicts:
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
