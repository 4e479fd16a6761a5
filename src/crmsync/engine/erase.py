"""GDPR erasure: anonymize a person everywhere it was synced, keep nothing personal.

``erase`` works on the record's group (``graph.linked_records``):

1. check every ``anonymize:`` against the live field types (a bad config
   changes nothing);
2. mark the whole group erased in the state database, so from then on apply
   skips every pair touching it: a stale source or a ``--full`` run never
   writes a personal value back, not even while this erasure runs;
3. write the replacement values into each system through its connector
   (push-only systems: into crmsync's own copy, in step 4);
4. in one state transaction scrub crmsync's own traces (shadows, outcome
   values and messages, queued messages, trigger memory, activity text,
   push-only copies) and record the erasure (outcome and activity entries,
   audit row), ids only.

A failure in 3 names the system and leaves the group marked erased; running
the erasure again finishes it (every step is idempotent).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from crmsync.config.models import Config, LinkConfig
from crmsync.connectors.base import Connector
from crmsync.convert import ConversionError, converter, equal, to_json
from crmsync.engine.graph import linked_records, object_config
from crmsync.errors import CrmsyncError, SystemUnavailable
from crmsync.model import RecordRef
from crmsync.state import log
from crmsync.state.store import StateStore, dumps, utcnow

# What is left where personal values were (outcome messages and fields, timeline
# text); the timeline shows it for a scrubbed outcome.
ERASED_TEXT = log.ERASED_TEXT
ERASED_ENTRY = "erased (GDPR): personal values anonymized; this record is no longer synced"


class EraseError(CrmsyncError):
    """The erasure could not finish; the group stays marked erased. Fix, then run it again."""

    def __init__(
        self, message: str, *, system: str | None = None, unavailable: bool = False
    ) -> None:
        super().__init__(message)
        self.system = system
        self.unavailable = unavailable


class EraseRefused(EraseError):
    """The config does not allow this erasure (bad ``anonymize:``): nothing was changed."""


class NothingToAnonymize(EraseRefused):
    """No object of the group declares ``anonymize:``: nothing was changed."""


class RecordNotFound(EraseError):
    """The record is neither in its system nor known to crmsync: nothing was marked.

    Marking an id that does not exist would stop a record created later with
    that id from ever being synced.
    """


@dataclass(slots=True)
class RecordErasure:
    ref: RecordRef
    # anonymized | already anonymized | not found | no anonymize
    result: str
    fields: list[str] = field(default_factory=list)


@dataclass(slots=True)
class EraseReport:
    ref: RecordRef
    by: str
    erased_at: datetime
    records: list[RecordErasure]
    # rows of crmsync's own state that were scrubbed, per kind
    scrubbed: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "record": str(self.ref),
            "by": self.by,
            "erased_at": self.erased_at,
            "records": [
                {"record": str(r.ref), "result": r.result, "fields": r.fields}
                for r in self.records
            ],
            "scrubbed": self.scrubbed,
        }


@dataclass(slots=True)
class _Plan:
    ref: RecordRef
    push_only: bool
    # typed replacement values (None: the object has no anonymize:)
    values: dict[str, Any] | None


def erase(
    config: Config,
    state: StateStore,
    connectors: dict[str, Connector],
    ref: RecordRef,
    by: str,
) -> EraseReport:
    """Erase ``ref`` and every record linked to it; see the module docstring.

    Raises ``UnknownRecordType`` (unknown system/object), ``RecordNotFound`` (the
    id exists nowhere: nothing marked), ``NothingToAnonymize`` or ``EraseError``
    (naming the system that refused or could not be reached).
    """
    group = linked_records(config, state, ref)
    refuse_missing(config, state, connectors, group, by)
    types = list(dict.fromkeys(f"{r.system}.{r.object}" for r in group))
    if not any(object_config(config, r.system, r.object).anonymize for r in group):
        raise NothingToAnonymize(
            f"nothing to erase: no object of the records linked to {ref} ({', '.join(types)}) "
            "declares anonymize: {field: replacement}; nothing was changed",
        )
    try:
        plans = [_plan(config, connectors, r) for r in group]
    except EraseError as exc:
        exc.hint = (
            f"run again when it answers: crmsync erase {ref}" if exc.unavailable
            else f"fix the config, then run: crmsync erase {ref}"
        )
        raise
    refs = [str(r) for r in group]
    now = utcnow()
    # Marked before any write: from here on apply leaves the group alone.
    with state.begin() as c:
        state.mark_erased(c, refs, by=by, now=now)

    results: list[RecordErasure] = []
    try:
        for p in plans:
            if p.values is None:
                results.append(RecordErasure(p.ref, "no anonymize"))
            elif p.push_only:  # crmsync's own copy: anonymized with the state, below
                results.append(RecordErasure(p.ref, "anonymized", sorted(p.values)))
            else:
                results.append(_write(connectors[p.ref.system], p.ref, p.values))
        notes = _remove_notes(state, connectors, refs)
    except EraseError as exc:
        exc.hint = f"the records stay marked erased; then run again: crmsync erase {ref}"
        with state.begin() as c:
            state.add_audit(
                c, by, "record.erase", str(ref),
                {"status": "failed", "system": exc.system, "records": refs}, now=utcnow(),
            )
        raise

    with state.begin() as c:
        scrubbed = _scrub(config, state, connectors, c, plans, results, now)
        scrubbed["notes_removed"] = notes
        scrubbed["logged"] = _record(config, state, c, group, now)
        state.add_audit(
            c, by, "record.erase", str(ref),
            {"status": "done", "records": [{"record": str(r.ref), "result": r.result}
                                           for r in results]},
            now=now,
        )
        erased_at = min(r["erased_at"] for r in state.erased_rows(c, refs))
    return EraseReport(ref, by, erased_at, results, scrubbed)


def refuse_missing(
    config: Config,
    state: StateStore,
    connectors: dict[str, Connector],
    group: list[RecordRef],
    by: str,
) -> None:
    """Raise ``RecordNotFound`` (and audit the refusal) when the group's record exists
    nowhere; a record paired with others exists by definition."""
    ref = group[0]
    if len(group) > 1 or record_exists(config, state, connectors, ref):
        return
    with state.begin() as c:
        state.add_audit(
            c, by, "record.erase", str(ref), {"status": "refused", "reason": "not found"},
            now=utcnow(),
        )
    raise RecordNotFound(
        f"{ref} does not exist: no such record in {ref.system}.{ref.object} and crmsync "
        "knows nothing about it; nothing was erased or marked",
    )


def record_exists(
    config: Config, state: StateStore, connectors: dict[str, Connector], ref: RecordRef
) -> bool:
    """Whether ``ref`` is in its system (a push-only system: crmsync's copy) or known to
    crmsync's state (paired, erased before, logged). Raises ``EraseError`` when the
    system cannot be asked; ``UnknownRecordType`` for an unknown system or object."""
    object_config(config, ref.system, ref.object)
    kind = f"{ref.system}.{ref.object}"
    sides = [(name, "source") for name, lc in config.links.items() if lc.source == kind]
    sides += [(name, "target") for name, lc in config.links.items() if lc.target == kind]
    with state.connect() as c:
        if state.record_known(c, str(ref), sides):
            return True
        if config.systems[ref.system].connector == "webhook":
            # Deleted pushes stay in crmsync's copy: still a record to erase.
            return state.pushed_get(c, ref.system, ref.object, ref.id) is not None
    try:
        return ref.id in connectors[ref.system].read(ref.object, [ref.id])
    except SystemUnavailable as exc:
        raise EraseError(
            f"system {ref.system} is unreachable: {exc.user_message}; cannot tell whether "
            f"{ref} exists; nothing was changed",
            system=ref.system, unavailable=True,
        ) from None
    except CrmsyncError as exc:
        raise EraseError(
            f"system {ref.system} could not read {ref}: {exc.user_message}; nothing was changed",
            system=ref.system,
        ) from None


def _remove_notes(state: StateStore, connectors: dict[str, Connector], refs: list[str]) -> int:
    """Delete the timeline notes crmsync wrote into systems about the group (on the
    records themselves, or naming them as related records): they hold old values."""
    with state.connect() as c:
        found = state.delivered_activities_of(c, refs)
    by_system: dict[str, list[str]] = {}
    for record_ref, ext in found:
        by_system.setdefault(record_ref.split(".", 1)[0], []).append(ext)
    for system, ids in by_system.items():
        conn = connectors.get(system)
        if conn is None:
            continue
        try:
            conn.remove_activities(ids)
        except SystemUnavailable as exc:
            raise EraseError(
                f"system {system} is unreachable: {exc.user_message}; crmsync's notes about "
                "the record are not removed there yet",
                system=system, unavailable=True,
            ) from None
        except CrmsyncError as exc:
            raise EraseError(
                f"system {system} refused to remove crmsync's notes: {exc.user_message}",
                system=system,
            ) from None
    return len(found)


def _plan(config: Config, connectors: dict[str, Connector], ref: RecordRef) -> _Plan:
    """The typed replacement values of one record, checked against its object's fields."""
    sys_cfg = config.systems[ref.system]
    anonymize = object_config(config, ref.system, ref.object).anonymize
    push_only = sys_cfg.connector == "webhook"
    if not anonymize:
        return _Plan(ref, push_only, None)
    where = f"{ref.system}.{ref.object}"
    try:
        spec = connectors[ref.system].describe(ref.object)
    except SystemUnavailable as exc:
        raise EraseError(
            f"system {ref.system} is unreachable: {exc.user_message}; nothing was changed",
            system=ref.system, unavailable=True,
        ) from None
    except CrmsyncError as exc:  # the table or object is not there
        raise EraseRefused(
            f"{where}: {exc.user_message}; nothing was changed", system=ref.system
        ) from None
    values: dict[str, Any] = {}
    for name, raw in anonymize.items():
        fs = spec.fields.get(name)
        if fs is None:
            raise EraseRefused(
                f"{where}: anonymize names field {name!r}, which it does not have "
                f"(fields: {', '.join(spec.fields)}); nothing was changed",
                system=ref.system,
            )
        if name == spec.key or fs.read_only:
            raise EraseRefused(
                f"{where}: anonymize cannot write {name!r} (the key or a field the system "
                "fills itself); nothing was changed",
                system=ref.system,
            )
        try:
            values[name] = converter(None, fs)(raw)
        except ConversionError as exc:
            raise EraseRefused(
                f"{where}: anonymize.{name}: {exc.reason}; nothing was changed",
                system=ref.system,
            ) from None
    return _Plan(ref, push_only, values)


def _write(conn: Connector, ref: RecordRef, values: dict[str, Any]) -> RecordErasure:
    """Write the replacement values into the record's own system (skip when already there)."""
    fields = sorted(values)
    try:
        current = conn.read(ref.object, [ref.id]).get(ref.id)
        if current is None:
            return RecordErasure(ref, "not found")
        if all(equal(v, current.values.get(k)) for k, v in values.items()):
            return RecordErasure(ref, "already anonymized", fields)
        result = conn.write(ref.object, updates=[(ref.id, values)])
    except SystemUnavailable as exc:
        raise EraseError(
            f"system {ref.system} is unreachable: {exc.user_message}; {ref} is not anonymized "
            "there yet",
            system=ref.system, unavailable=True,
        ) from None
    except CrmsyncError as exc:
        raise EraseError(
            f"system {ref.system} refused to anonymize {ref}: {exc.user_message}",
            system=ref.system,
        ) from None
    err = result.errors.get(ref.id) or next(iter(result.errors.values()), None)
    refused = result.refused.get(ref.id) or next(iter(result.refused.values()), None)
    if err is None and refused:
        # Written without some replacement values: the record is not anonymized.
        err = "; ".join(f"{name}: {why}" for name, why in sorted(refused.items()))
    if err is not None:
        raise EraseError(
            f"system {ref.system} refused to anonymize {ref}: {err}", system=ref.system
        )
    return RecordErasure(ref, "anonymized", fields)


def _scrub(
    config: Config,
    state: StateStore,
    connectors: dict[str, Connector],
    c: Any,
    plans: list[_Plan],
    results: list[RecordErasure],
    now: datetime,
) -> dict[str, int]:
    """Remove every personal value crmsync itself keeps about the group."""
    refs = [str(p.ref) for p in plans]
    canon = {
        (p.ref.system, p.ref.object): {k: to_json(v) for k, v in p.values.items()}
        for p in plans
        if p.values is not None
    }
    counts = {"pushed_records": 0, "identities": 0, "messages": 0, "trigger_seen": 0}
    for p, result in zip(plans, results, strict=True):
        if p.push_only and p.values is not None:
            result.result = _anonymize_pushed(state, c, p, canon[(p.ref.system, p.ref.object)],
                                              now)
            counts["pushed_records"] += result.result == "anonymized"
    for name, lc in config.links.items():
        sids = [p.ref.id for p in plans if f"{p.ref.system}.{p.ref.object}" == lc.source]
        tids = [p.ref.id for p in plans if f"{p.ref.system}.{p.ref.object}" == lc.target]
        if not sids and not tids:
            continue
        pairs = state.identity_pairs(c, name, source_ids=sids, target_ids=tids)
        idents = state.identities_by_source(c, name, [s for s, _ in pairs])
        rows = [ident.row(_scrubbed_shadow(lc, ident.shadow, canon)) for ident in idents.values()]
        state.save_identities(c, name, rows, scrub=True)
        counts["identities"] += len(rows)
        counts["messages"] += state.delete_record_messages(c, name, "source", sids)
        counts["messages"] += state.delete_record_messages(c, name, "target", tids)
        counts["trigger_seen"] += state.delete_trigger_seen(c, name, sids)
    counts["trigger_seen"] += _scrub_rule_memory(config, state, c, plans, canon)
    counts["rule_firings"] = state.scrub_firings(c, refs)
    through = _scrub_written_through_refs(config, state, connectors, c, plans, canon)
    counts["identities"] += len(through)
    counts["outcomes"] = state.erase_outcome_values(c, refs + through, ERASED_TEXT)
    counts["activities"] = state.erase_activity_text(c, refs, ERASED_TEXT)
    return counts


def _scrub_rule_memory(
    config: Config,
    state: StateStore,
    c: Any,
    plans: list[_Plan],
    canon: dict[tuple[str, str], dict[str, Any]],
) -> int:
    """What rules saw of the erased records is forgotten but for the anonymized values
    (the erasure's own write, so no rule fires on it); changes waiting for them go."""
    n = 0
    for rname, rc in config.rules.items():
        ids = [p.ref.id for p in plans if f"{p.ref.system}.{p.ref.object}" == rc.on]
        if not ids:
            continue
        q = f"rule:{rname}"
        anon = canon.get((rc.system, rc.object), {})
        seen = state.trigger_seen(c, q, ids)
        state.delete_trigger_seen(c, q, ids)
        # Only the replacements are kept: a field the memory lacks is taken as it is
        # when next seen, never as a change (so nothing fires on the erasure either).
        state.save_trigger_seen(c, q, [(rid, dict(anon)) for rid in seen])
        state.delete_record_messages(c, q, "source", ids)
        n += len(seen)
    return n


def _scrub_written_through_refs(
    config: Config,
    state: StateStore,
    connectors: dict[str, Connector],
    c: Any,
    plans: list[_Plan],
    canon: dict[tuple[str, str], dict[str, Any]],
) -> list[str]:
    """Pairs that wrote into an erased record through a ref (a deal's ``contact.email``
    into its person) keep those values in their shadow and log: scrub them too.

    Found through the timeline, whose entries name the related records they
    reached. Returns the refs of the target records whose log must be scrubbed.
    """
    erased = {str(p.ref): p for p in plans}
    scrubbed: list[str] = []
    for link, record_ref in sorted(state.activities_mentioning(c, list(erased))):
        lc = config.links.get(link)
        if lc is None or record_ref in erased or not record_ref.startswith(lc.target + ":"):
            continue
        conn = connectors.get(lc.target_system)
        refs = conn.refs(lc.target_object) if conn is not None else {}
        objects = {p.ref.object for p in plans if p.ref.system == lc.target_system}
        prefixes = [f"{ref}." for ref, obj in refs.items() if obj in objects]
        if not prefixes:
            continue
        tid = record_ref[len(lc.target) + 1:]
        idents = state.identities_by_target(c, link, [tid])
        rows = []
        for ident in idents.values():
            shadow = dict(ident.shadow)
            for key in list(shadow):
                head = next((p for p in prefixes if key.startswith(p)), None)
                if key.startswith("~"):
                    shadow.pop(key)  # rejection reasons quote values
                elif head is not None:
                    anon = canon.get((lc.target_system, refs[head[:-1]]), {})
                    shadow[key] = anon.get(key[len(head):])
            rows.append(ident.row(shadow))
        state.save_identities(c, link, rows, scrub=True)
        scrubbed.append(record_ref)
    return scrubbed


def _anonymize_pushed(
    state: StateStore, c: Any, p: _Plan, values: dict[str, Any], now: datetime
) -> str:
    """A push-only system cannot be written: its copy in crmsync is what gets anonymized.

    The record keeps its seq, so capture does not see a change (there is none to sync).
    """
    stored = state.pushed_get(c, p.ref.system, p.ref.object, p.ref.id)
    if stored is None:
        return "not found"
    fields_json, deleted, seq = stored
    doc = json.loads(fields_json)
    kept = doc.setdefault("values", {})
    if all(kept.get(k) == v for k, v in values.items()):
        return "already anonymized"
    kept.update(values)
    state.pushed_put(
        c, p.ref.system, p.ref.object, p.ref.id, dumps(doc), deleted=deleted, seq=seq, now=now
    )
    return "anonymized"


def _scrubbed_shadow(
    lc: LinkConfig, shadow: dict[str, Any], canon: dict[tuple[str, str], dict[str, Any]]
) -> dict[str, Any]:
    """Every shadow value becomes the anonymized one where known, else null.

    Match fields keep their values (record keys, not personal) unless anonymized;
    bookkeeping entries (``~rejected`` reasons quote values) are dropped.
    """
    t_anon = canon.get((lc.target_system, lc.target_object), {})
    s_anon = canon.get((lc.source_system, lc.source_object), {})
    source_of = {m.target: m.source for m in lc.fields}
    keep = set(lc.match.values())
    out: dict[str, Any] = {}
    for key, value in shadow.items():
        if key.startswith("~"):
            continue
        if key in t_anon:
            out[key] = t_anon[key]
        elif source_of.get(key) in s_anon:
            out[key] = s_anon[source_of[key]]
        elif key in keep:
            out[key] = value
        else:
            out[key] = None
    return out


def _record(
    config: Config, state: StateStore, c: Any, group: list[RecordRef], now: datetime
) -> int:
    """One ``erased`` outcome per pair of the group (and an activity per record), once."""
    ids: dict[str, list[str]] = {}
    for r in group:
        ids.setdefault(f"{r.system}.{r.object}", []).append(r.id)
    already = state.erased_outcome_refs(c, [str(r) for r in group])
    at = state.ts(now)
    outcomes: list[dict[str, Any]] = []
    activities: dict[str, str] = {}
    for name, lc in config.links.items():
        sids, tids = ids.get(lc.source, []), ids.get(lc.target, [])
        if not sids and not tids:
            continue
        for sid, tid in state.identity_pairs(c, name, source_ids=sids, target_ids=tids):
            sref = str(RecordRef(lc.source_system, lc.source_object, sid))
            tref = str(RecordRef(lc.target_system, lc.target_object, tid))
            if (sref, tref) in already:
                continue
            outcomes.append(
                {
                    "run_id": None, "link": name, "source_ref": sref, "target_ref": tref,
                    "action": "erased", "status": "ok", "fields": "[]",
                    "message": ERASED_ENTRY, "at": at,
                }
            )
            activities.setdefault(sref, name)
            activities.setdefault(tref, name)
    state.add_outcomes(c, outcomes)
    state.add_erasure_activities(
        c, [(link, ref) for ref, link in activities.items()], ERASED_ENTRY, now=now
    )
    return len(outcomes)
