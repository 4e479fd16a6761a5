"""Decide: what a batch writes and what each record's outcome is. Pure: no I/O.

``decide`` takes what apply gathered (pairs, both sides' records, matches,
erasures) and returns one ``Pending`` per record plus the writes to make;
``apply_refusals`` then turns fields a system refused at write time into
``rejected`` ones. Both only compute, so they are tested with plain data.

The shadow (the last values both sides agreed on) carries two bookkeeping
entries besides the fields: ``~rejected`` (field -> reason a value could not be
converted, so an unchanged refusal is reported once) and ``~refused`` (side ->
field -> the value that system refused, so it is not sent again on every
re-read).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crmsync.convert import to_json
from crmsync.engine.link import CompiledLink
from crmsync.engine.merge import MergeResult, create_values, merge
from crmsync.model import (
    Action,
    FieldOutcome,
    FieldStatus,
    Outcome,
    Record,
    RecordRef,
    applied_version,
)
from crmsync.state.store import Identity

# Shadow entry remembering which fields were refused and why, so a value that
# stays unconvertible is reported once, not on every re-read.
REJECTED_KEY = "~rejected"
# Shadow entry: side ("target"/"source") -> field -> the (canonical) value that
# system refused to take, so an unchanged refused value is not sent again on
# every re-read.
REFUSED_KEY = "~refused"


@dataclass(slots=True)
class Pending:
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


@dataclass(slots=True)
class Gathered:
    """Everything a batch's decisions need, read in apply's gather step."""

    # source id -> its identity (None: never paired), erased pairs left out;
    # with a trigger, only the pairs it fires for
    pairs: dict[str, Identity | None]
    # source records read (a record missing here is gone from the source)
    records: dict[str, Record]
    # target records of the pairs and of the matches
    targets: dict[str, Record] = field(default_factory=dict)
    # pairs whose trigger did not fire now
    waiting: dict[str, Identity | None] = field(default_factory=dict)
    # new source id -> the target record its match keys found
    matched: dict[str, str] = field(default_factory=dict)
    # new source id -> why its match keys found no single free target record
    ambiguous: dict[str, str] = field(default_factory=dict)
    # refs of related records (through the target's ref fields) that were erased
    erased_related: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Decisions:
    """Decided records (waiting ones first, then the pairs in order) and their writes."""

    pending: list[Pending] = field(default_factory=list)
    creates: list[dict[str, Any]] = field(default_factory=list)
    target_updates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    target_deletes: list[str] = field(default_factory=list)
    source_updates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def decide(
    link: CompiledLink,
    g: Gathered,
    *,
    refs: dict[str, str] | None = None,
    target_system: str = "",
    converted: dict[str, tuple[dict[str, Any], dict[str, Any]]] | None = None,
) -> Decisions:
    """Decide every record of a gathered batch.

    ``refs`` maps the target's ref fields to the object they point to (a deal's
    person), ``target_system`` names its system: writes through a ref that is
    empty or points to an erased record are held back per field.
    ``converted`` holds new records' create values and shadows converted
    beforehand column by column (``merge.create_columns``); a create not in it
    is converted here, one record at a time.
    """
    converted = converted or {}
    refs = refs or {}
    name = link.name
    d = Decisions()
    decided = d.pending
    for sid, ident in g.waiting.items():
        decided.append(
            _not_synced(
                name, sid, ident, Action.WAITING,
                "not synced: its trigger condition did not become true now",
            )
        )
    for sid, ident in g.pairs.items():
        rec = g.records.get(sid)
        if rec is None or link.is_deleted(rec.values):
            _decide_delete(link, sid, ident, rec, d)
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
            tid = g.matched.get(sid)
            if tid is None:
                decided.append(
                    _decide_create(link, sid, rec, g.ambiguous.get(sid), d, converted.get(sid))
                )
                continue
            trec = g.targets.get(tid)
            if trec is None:  # matched a moment ago, gone now: the next change retries
                out = Outcome(
                    name,
                    sid,
                    None,
                    Action.SKIPPED,
                    message=f"the matching target record {tid} disappeared while pairing",
                )
                decided.append(Pending(sid, None, out, None, None, None, save_identity=False))
                continue
            base: dict[str, Any] | None = None
            first = True
        else:
            tid = ident.target_id
            trec = g.targets.get(tid) if tid else None
            if trec is None:
                out = Outcome(
                    name,
                    sid,
                    tid,
                    Action.SKIPPED,
                    message="the target record no longer exists; not re-created",
                )
                decided.append(Pending(sid, tid, out, None, None, None, save_identity=False))
                continue
            base = ident.shadow
            first = False
        newer = _newer(rec.version, trec.version)
        m = merge(link.plans, rec.values, trec.values, base, link.policy, newer)
        if refs:
            _hold_refs(refs, target_system, trec, m, base, g.erased_related)
        if base and REFUSED_KEY in base:
            hold_refused(m, base, {pl.source: pl.key for pl in link.plans})
        wrote = bool(m.target_updates or m.source_updates)
        remember_rejections(m.shadow, m.fields)
        # A first pairing is `matched`, with whatever it wrote in its fields: one
        # action per record, so each count is one action or status in the log.
        action = Action.MATCHED if first else (Action.UPDATED if wrote else Action.UNCHANGED)
        if action is Action.UNCHANGED and any(f.status is FieldStatus.REJECTED for f in m.fields):
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
        p = Pending(
            sid, tid, out, m.shadow, applied_version(rec), applied_version(trec), base=base
        )
        if m.target_updates:
            d.target_updates.append((tid, m.target_updates))
            p.target_write = True
        if m.source_updates:
            d.source_updates.append((sid, m.source_updates))
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
    return d


def _decide_create(
    link: CompiledLink,
    sid: str,
    rec: Record,
    ambiguous: str | None,
    d: Decisions,
    converted: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> Pending:
    """A source record never paired and matched to nothing; ``converted``: its
    values (match keys included) and shadow, already converted without a refusal."""
    name = link.name
    if ambiguous is not None:
        out = Outcome(name, sid, None, Action.REJECTED, message=ambiguous)
        return Pending(sid, None, out, None, None, None, save_identity=False)
    if not link.config.create:
        out = Outcome(
            name,
            sid,
            None,
            Action.SKIPPED,
            message="no matching target record, and the link does not create",
        )
        return Pending(sid, None, out, None, None, None, save_identity=False)
    if converted is not None:
        (values, shadow), fouts = converted, []
    else:
        values, shadow, fouts = create_values(link.plans, rec.values)
        err = match_values(link, values, rec.values)
        if err:
            out = Outcome(name, sid, None, Action.REJECTED, fouts, message=err)
            return Pending(sid, None, out, None, None, None, save_identity=False)
        remember_rejections(shadow, fouts)
    out = Outcome(name, sid, None, Action.CREATED, fouts, created=shadow)
    p = Pending(sid, None, out, shadow, applied_version(rec), None, create_index=len(d.creates))
    d.creates.append(values)
    return p


def _decide_delete(
    link: CompiledLink, sid: str, ident: Identity | None, rec: Record | None, d: Decisions
) -> None:
    decided = d.pending
    if ident is not None and ident.deleted:
        # Its delete was handled before: a re-read is nothing new.
        out = Outcome(link.name, sid, ident.target_id, Action.UNCHANGED, quiet=True)
        decided.append(Pending(sid, ident.target_id, out, None, None, None, save_identity=False))
        return
    if ident is None or not ident.target_id:
        why = (
            "not found at the source and never synced: nothing to do"
            if rec is None
            else "deleted at the source before it was ever synced: nothing to do"
        )
        out = Outcome(link.name, sid, None, Action.SKIPPED, message=why)
        decided.append(Pending(sid, None, out, None, None, None, save_identity=False))
        return
    tid = ident.target_id
    version = applied_version(rec) if rec is not None else ident.source_version
    if link.on_delete == "ignore":
        out = Outcome(
            link.name,
            sid,
            tid,
            Action.SKIPPED,
            message="deleted at the source; on_delete is ignore",
        )
        decided.append(
            Pending(sid, tid, out, ident.shadow, version, ident.target_version, deleted=True)
        )
        return
    if link.on_delete == "delete":
        d.target_deletes.append(tid)
        out = Outcome(
            link.name,
            sid,
            tid,
            Action.DELETED,
            message="deleted at the source; deleted in the target",
        )
        decided.append(Pending(sid, tid, out, ident.shadow, version, None, deleted=True))
        return
    values = dict(link.delete_values)
    d.target_updates.append((tid, values))
    shadow = dict(ident.shadow)
    fouts = []
    for k, v in values.items():
        shadow[k] = to_json(v)
        fouts.append(FieldOutcome(k, FieldStatus.UPDATED, "target", ident.shadow.get(k), shadow[k]))
    out = Outcome(
        link.name,
        sid,
        tid,
        Action.DELETED,
        fouts,
        message="deleted at the source; soft-deleted in the target",
    )
    decided.append(
        Pending(
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


def match_values(link: CompiledLink, values: dict[str, Any], src: dict[str, Any]) -> str | None:
    """New records carry their match key, so a retried create is found, not repeated."""
    for mp in link.matches:
        if mp.target in values:
            continue
        try:
            values[mp.target] = mp.forward(src.get(mp.source))
        except ValueError as exc:
            return f"match field {mp.source}: {exc}"
    return None


def related_ref(target_system: str, refs: dict[str, str], trec: Record, ref: str) -> str | None:
    """The record a target record's ref field points to (None: the field is empty)."""
    rid = trec.values.get(ref)
    return None if rid is None else str(RecordRef(target_system, refs[ref], str(rid)))


def _hold_refs(
    refs: dict[str, str],
    target_system: str,
    trec: Record,
    m: MergeResult,
    base: dict[str, Any] | None,
    erased: set[str],
) -> None:
    """Drop writes through a ref that points nowhere or to an erased record, and
    say so per field: the rest of the record is still written."""
    for ref in refs:
        rref = related_ref(target_system, refs, trec, ref)
        if rref is None:
            why = f"no related {refs[ref]} to update ({ref} is empty)"
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


def remember_rejections(shadow: dict[str, Any], fields: list[FieldOutcome]) -> None:
    rejected = {f.field: f.reason for f in fields if f.status is FieldStatus.REJECTED}
    if rejected:
        shadow[REJECTED_KEY] = rejected
    else:
        shadow.pop(REJECTED_KEY, None)


def hold_refused(m: MergeResult, base: dict[str, Any], key_of: dict[str, str]) -> None:
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


def apply_refusals(
    p: Pending,
    target: dict[str, str],
    source: dict[str, str],
    *,
    key_of: dict[str, str],
    systems: dict[str, str],
) -> None:
    """Fields a system refused at write time become ``rejected`` with its reason;
    the shadow goes back to what it was for them, so it never claims a value
    that was not written (and the next change of the record tries again).

    ``key_of`` maps a source field to its shadow key; ``systems`` names the
    ``target`` and ``source`` systems for the reasons.
    """
    if not target and not source:
        return
    out, shadow = p.outcome, p.shadow

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
            reason = f"refused by {systems['target']}: {why}"
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
        f.reason = f"refused by {systems[f.side or 'target']}: {why}"
    if shadow is not None:
        remember_rejections(shadow, out.fields)
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


def _not_synced(
    link: str, sid: str, ident: Identity | None, action: Action, why: str
) -> Pending:
    """A record left alone this pass (filtered, waiting): logged with the reason, its
    pair and state untouched."""
    tid = ident.target_id if ident is not None else None
    out = Outcome(link, sid, tid, action, message=why)
    return Pending(sid, None, out, None, None, None, save_identity=False)


def _newer(a: Any, b: Any) -> bool | None:
    if a is None or b is None:
        return None
    try:
        return bool(a > b)
    except TypeError:
        return None
