"""Sync requests for named records (API ``POST /api/links/{name}/sync`` with records,
CLI ``sync --record``): every requested record gets an outcome.

A request is checked before anything is queued, the way apply would decide:
a record that is not in its system is ``not found``; one that was erased, whose
trigger condition is not met, that fails the link's filter, or that is a target
record never paired with a source record is ``skipped`` with the reason; the
rest are ``queued``. Each outcome is kept in the log (``crmsync log --record``,
``--link``) in the same state transaction that queues, and returned to the caller.

When the system's quota allows no call now, the records are queued unchecked:
the check would itself spend the budget. Apply decides them in the next window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from crmsync.engine.capture import queue_records
from crmsync.engine.runner import Engine
from crmsync.model import Record, RecordRef, Side
from crmsync.state.store import Identity, utcnow

RequestStatus = Literal["queued", "skipped", "not found"]

FILTERED = "does not pass the link's filter"
NOT_TRIGGERED = "trigger condition not met"
ERASED = "erased (GDPR): never synced again"
DELETED_UNSYNCED = "deleted at the source and never synced: nothing to do"
DELETED_SYNCED = "deleted at the source; the delete was already synced"
GONE_PAIRED = "no longer in its system: the delete is synced to its pair"
GONE_TARGET = "no longer in its system: its pair is checked (it is not re-created)"
UNPAIRED = "not paired with a source record: nothing flows back from it"


@dataclass(slots=True)
class RecordRequest:
    link: str
    side: Side
    ref: str  # SYSTEM.OBJECT:ID
    id: str
    status: RequestStatus
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "reason": self.reason}


def request_records(
    engine: Engine,
    name: str,
    side: Side,
    ids: Sequence[str],
    *,
    actor: str,
    now: datetime | None = None,
    on_commit: Callable[[sa.Connection, list[RecordRequest]], None] | None = None,
) -> list[RecordRequest]:
    """Check, queue and log a request to sync ``ids`` (of ``side``) over link ``name``.

    ``on_commit`` runs in the transaction that queues and logs (an audit row).
    Raises ``SystemUnavailable`` when the system cannot be read (nothing queued or
    logged then: the caller says so and the request can be made again).
    """
    link = engine.compiled(name)
    lc = link.config
    system, obj = (
        (lc.source_system, lc.source_object) if side is Side.SOURCE
        else (lc.target_system, lc.target_object)
    )
    prefix = RecordRef.prefix(system, obj)
    sprefix = RecordRef.prefix(lc.source_system, lc.source_object)
    tprefix = RecordRef.prefix(lc.target_system, lc.target_object)
    ids = list(dict.fromkeys(ids))
    state = engine.state
    out: dict[str, RecordRequest] = {}

    def put(rid: str, status: RequestStatus, reason: str | None = None) -> None:
        out[rid] = RecordRequest(name, side, str(RecordRef(system, obj, rid)), rid, status, reason)

    with state.connect() as c:
        erased = state.erased_refs(c, [prefix + i for i in ids])
    for rid in ids:
        if prefix + rid in erased:
            put(rid, "skipped", ERASED)
    todo = [i for i in ids if i not in out]
    wait = engine.meter.blocked((system,)) if todo else None
    if wait is not None:
        for rid in todo:
            put(rid, "queued", f"not checked: {wait.describe()}; it is decided then")
    elif todo:
        records: dict[str, Record] = {}
        try:
            for i in range(0, len(todo), link.batch_size):
                records.update(engine.connectors[system].read(obj, todo[i : i + link.batch_size]))
        finally:
            engine.settle_quota()
        found = [i for i in todo if i in records]
        with state.connect() as c:
            # Pairs of every requested id: one gone from its system but paired is a
            # delete to hand over (a hard delete no capture can see), not "not found".
            if side is Side.SOURCE:
                idents: dict[str, Identity] = state.identities_by_source(c, name, todo)
                pairs: dict[str, Identity | None] = {i: idents.get(i) for i in todo}
                seen = state.trigger_seen(c, name, found) if link.trigger and found else {}
            else:
                idents = state.identities_by_target(c, name, todo)
                pairs = {ident.source_id: ident for ident in idents.values()}
                seen = {}
            gone = set(state.erased_pairs(c, sprefix, tprefix, pairs)) if pairs else set()
        for rid in todo:
            rec = records.get(rid)
            if rec is None:
                ident = idents.get(rid)
                if ident is None:
                    put(rid, "not found", f"no record {rid} in {system}.{obj}")
                elif (ident.source_id if side is Side.TARGET else rid) in gone:
                    put(rid, "skipped", ERASED)
                elif side is Side.SOURCE and ident.deleted:
                    put(rid, "skipped", DELETED_SYNCED)
                else:
                    put(rid, "queued", GONE_PAIRED if side is Side.SOURCE else GONE_TARGET)
                continue
            if side is Side.TARGET:
                ident = idents.get(rid)
                if ident is None:
                    put(rid, "skipped", UNPAIRED)
                elif ident.source_id in gone:
                    put(rid, "skipped", ERASED)
                else:
                    put(rid, "queued")
                continue
            # The order apply decides in: erasure, trigger, delete, filter.
            ident = idents.get(rid)
            deleted = link.is_deleted(rec.values)
            if rid in gone:
                put(rid, "skipped", ERASED)
            elif link.trigger is not None and not link.trigger(seen.get(rid), rec.values):
                put(rid, "skipped", NOT_TRIGGERED)
            elif deleted and (ident is None or ident.deleted):
                put(rid, "skipped", DELETED_UNSYNCED)
            elif not deleted and not link.accepts(rec.values):
                put(rid, "skipped", FILTERED)
            else:
                put(rid, "queued")
    results = [out[i] for i in ids]
    _commit(engine, results, actor, now or utcnow(), on_commit)
    return results


def _commit(
    engine: Engine,
    results: list[RecordRequest],
    actor: str,
    now: datetime,
    on_commit: Callable[[sa.Connection, list[RecordRequest]], None] | None,
) -> None:
    """Queue the queued ones (through capture, the one producer of messages) and
    log every outcome, in one state transaction."""
    state = engine.state
    at = state.ts(now)
    rows = []
    for r in results:
        words = "queued" if r.status == "queued" else r.status
        message = f"sync requested by {actor}: {words}" + (f" — {r.reason}" if r.reason else "")
        rows.append(
            {
                "run_id": None,
                "link": r.link,
                "source_ref": r.ref if r.side is Side.SOURCE else None,
                "target_ref": r.ref if r.side is Side.TARGET else None,
                "action": r.status,
                "status": "ok" if r.status == "queued" else "skipped",
                "fields": "[]",
                "message": message,
                "at": at,
            }
        )
    by_side: dict[tuple[str, Side], list[str]] = {}
    for r in results:
        if r.status == "queued":
            by_side.setdefault((r.link, r.side), []).append(r.id)
    with state.begin() as c:
        for (link, side), rids in by_side.items():
            queue_records(state, c, link, side, rids, now=now)
        state.add_outcomes(c, rows)
        if on_commit is not None:
            on_commit(c, results)
