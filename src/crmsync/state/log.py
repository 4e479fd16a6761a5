"""The log: runs, per-record outcomes, and record timelines (activities).

A record's timeline is its outcomes, each told in words when read
(``state.timeline.activity_text``); ``crmsync_activities`` keeps a row only
for what an outcome does not hold: delivery into a system's own timeline,
related records an entry names, erasure entries, and the stored text of
entries logged before schema v6.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from crmsync.model import Action, FieldOutcome, FieldStatus, Outcome
from crmsync.state import schema as S
from crmsync.state.db import Database, chunks, dumps, utcnow
from crmsync.state.timeline import HEADLINES, activity_text

OUTCOME_COLUMNS = (
    "run_id", "link", "source_ref", "target_ref", "action", "status", "fields", "message", "at",
)
# Built once: ``_executemany`` caches its compiled form (the apply hot path).
_OUTCOME_INSERT = sa.insert(S.outcomes).values({k: sa.bindparam(k) for k in OUTCOME_COLUMNS})
_OUTCOME_RETURNING = _OUTCOME_INSERT.returning(S.outcomes.c.id)
_PAGE_INSERT = (
    sa.insert(S.outcomes)
    .values({k: sa.bindparam(k) for k in (*OUTCOME_COLUMNS, "records")})
    .returning(S.outcomes.c.id)
)


# A create's log entry whose values are its pair's (``first_shadow``, else the
# shadow): the values are not copied into the log (schema v6).
CREATED_FROM_PAIR = '{"created":null}'
# What is left where personal values were (outcome messages and fields, timeline text).
ERASED_TEXT = "erased (GDPR): the values were removed"
# Outcome actions that are entries on the target record's timeline.
TIMELINE_ACTIONS = tuple(a.value for a in HEADLINES)
ACTIVITY_COLUMNS = (
    "id", "link", "record_ref", "at", "kind", "text", "deliver", "delivered_at", "external_id",
    "mentions", "outcome_id",
)

_ACTIVITY_INSERT = sa.insert(S.activities)


def expand_fields(stored: Any, created: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per-field outcomes from a log row.

    A create is stored compactly as ``{"created": <shadow>}`` (the same JSON
    text as the identity's shadow, encoded once), or as ``{"created": null}``
    when the values are its pair's (``created``); every field in it was
    written from nothing, and ``~rejected`` lists the fields refused.
    """
    if not isinstance(stored, dict):
        return list(stored)
    shadow = stored.get("created") or created or {}
    out: list[dict[str, Any]] = [
        {"field": k, "status": "updated", "side": "target", "old": None, "new": v}
        for k, v in shadow.items()
        if not k.startswith("~") and v is not None  # created empty: nothing written
    ]
    for k, reason in shadow.get("~rejected", {}).items():
        out.append({"field": k, "status": "rejected", "reason": reason})
    return out


def outcome_text(row: dict[str, Any], created: dict[str, Any] | None) -> str | None:
    """The timeline text of an outcome row (None: not a timeline entry)."""
    if row["action"] not in TIMELINE_ACTIONS or not row["target_ref"]:
        return None
    if row["message"] == ERASED_TEXT:
        return ERASED_TEXT  # scrubbed by an erasure: the values are gone
    stored = json.loads(row["fields"] or "[]")
    out = Outcome(row["link"], None, None, Action(row["action"]), message=row["message"])
    if isinstance(stored, dict):
        out.created = stored.get("created") or created or {}
        out.fields = [
            FieldOutcome(k, FieldStatus.REJECTED, reason=why)
            for k, why in out.created.get("~rejected", {}).items()
        ]
    else:
        out.fields = [
            FieldOutcome(
                f["field"], FieldStatus(f["status"]), f.get("side"), f.get("old"), f.get("new"),
                f.get("reason"),
            )
            for f in stored
            if f.get("status") in FieldStatus.__members__.values()
        ]
    return activity_text(out, row["source_ref"] or "")


def created_values(
    db: Database, c: sa.Connection, rows: Iterable[dict[str, Any]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """The values of the creates among outcome ``rows`` logged as their pair's
    (``CREATED_FROM_PAIR``): ``(link, source_ref)`` -> values."""
    by_link: dict[str, dict[str, str]] = {}
    for r in rows:
        if r["fields"] == CREATED_FROM_PAIR and r["source_ref"]:
            sid = r["source_ref"].split(":", 1)[1]
            by_link.setdefault(r["link"], {})[sid] = r["source_ref"]
    i = S.identities
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for link, refs in by_link.items():
        q = sa.select(i.c.source_id, i.c.first_shadow, i.c.shadow).where(
            i.c.link == link, db.in_keys(i.c.source_id, list(refs))
        )
        for sid, first, shadow in c.execute(q):
            out[(link, refs[sid])] = db.decode_shadow(c, first or shadow)
    return out


def _split_ref(ref: str) -> tuple[str, str]:
    """``"erp.customer:C1"`` -> ``("erp.customer:", "C1")``."""
    head, _, rid = ref.partition(":")
    return head + ":", rid


def _plain_create(r: dict[str, Any]) -> bool:
    """A create of a new pair that wrote every value and tells nothing else: it
    goes into its batch's page row."""
    return (
        r["fields"] == CREATED_FROM_PAIR and r["status"] == "ok" and r["message"] is None
        and "timeline" not in r and bool(r["source_ref"]) and bool(r["target_ref"])
    )


def _page_entry(page: dict[str, Any], sid: str, tid: str) -> dict[str, Any]:
    """One record's outcome in a page row, as a row of its own reads."""
    out = {**page, "source_ref": page["source_ref"] + sid, "target_ref": page["target_ref"] + tid,
           "fields": CREATED_FROM_PAIR}
    out.pop("records", None)
    return out


def expand_pages(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outcome rows with each page row as its records' rows (newest first, as listed)."""
    out: list[dict[str, Any]] = []
    for r in rows:
        if r.get("records") is None:
            r.pop("records", None)
            out.append(r)
            continue
        for sid, tid in reversed(json.loads(r["fields"])["page"]):
            out.append(_page_entry(r, sid, tid))
    return out


def page_entries(db: Database, c: sa.Connection, record: str) -> list[dict[str, Any]]:
    """The outcomes of ``record`` logged in page rows (its create, on each link that
    created it), each as a row of its own reads."""
    o, i = S.outcomes, S.identities
    prefix, rid = _split_ref(record)
    out: list[dict[str, Any]] = []
    for ref_col, id_col in ((o.c.source_ref, i.c.source_id), (o.c.target_ref, i.c.target_id)):
        # The links with pages on this object: few, found through the ref index.
        links = c.execute(
            sa.select(o.c.link).where(ref_col == prefix, o.c.records.is_not(None)).distinct()
        ).scalars().all()
        if not links:
            continue
        # The pairs by key first, through an index that holds it (see _identities).
        keys = c.execute(
            sa.select(i.c.link, i.c.source_id).where(i.c.link.in_(links), id_col == rid)
        ).all()
        if not keys:
            continue
        q = sa.select(i.c.created_in, i.c.source_id, i.c.target_id).where(
            sa.or_(*(sa.and_(i.c.link == k[0], i.c.source_id == k[1]) for k in keys)),
            i.c.created_in.is_not(None),
        )
        for pid, sid, tid in c.execute(q).all():
            page = c.execute(sa.select(o).where(o.c.id == pid)).first()
            if page is not None:
                out.append(_page_entry(dict(page._mapping), sid, tid or ""))
    return out


def split_from_page(db: Database, c: sa.Connection, entry: dict[str, Any]) -> None:
    """Take a record's create out of its page into a row of its own (an erasure
    scrubs that row)."""
    o, i = S.outcomes, S.identities
    page = c.execute(sa.select(o.c.fields, o.c.records).where(o.c.id == entry["id"])).first()
    if page is None:
        return
    sid = _split_ref(entry["source_ref"])[1]
    members = [m for m in json.loads(page[0])["page"] if m[0] != sid]
    if members:
        c.execute(sa.update(o).where(o.c.id == entry["id"]).values(
            fields=dumps({"page": members}), records=len(members)))
    else:
        c.execute(sa.delete(o).where(o.c.id == entry["id"]))
    c.execute(sa.insert(o).values({k: entry[k] for k in OUTCOME_COLUMNS}))
    c.execute(sa.update(i).where(i.c.link == entry["link"], i.c.source_id == sid)
              .values(created_in=None))


def mentioning(refs: Sequence[str]) -> Any:
    """Entries whose ``mentions`` name one of ``refs``."""
    m = S.activities.c.mentions
    return sa.or_(*[m.contains(f" {r} ", autoescape=True) for r in refs])


def activity_refs(refs: Sequence[str]) -> Any:
    """Entries on one of ``refs`` or naming one of them."""
    return sa.or_(S.activities.c.record_ref.in_(list(refs)), mentioning(refs))


class LogMixin(Database):
    """What each run did: its counts, one outcome per record touched, and timelines."""

    # -- runs and outcomes ----------------------------------------------------
    def start_run(self, link: str, kind: str) -> int:
        with self.begin() as c:
            res = c.execute(
                sa.insert(S.runs).values(
                    link=link, kind=kind, status="running", started_at=utcnow(), counts="{}"
                )
            )
            return int(res.inserted_primary_key[0])

    def finish_run(
        self, run_id: int, status: str, counts: dict[str, int], error: str | None = None
    ) -> None:
        with self.begin() as c:
            c.execute(
                sa.update(S.runs)
                .where(S.runs.c.id == run_id)
                .values(status=status, finished_at=utcnow(), counts=dumps(counts), error=error)
            )

    def add_outcomes(self, c: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Insert outcome rows. A row carrying ``"timeline"`` (its timeline row, see
        ``add_activities``) has that row's ``outcome_id`` set to its id."""
        if not rows:
            return
        pages: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        rest: list[dict[str, Any]] = []
        for r in rows:
            if _plain_create(r):
                pages.setdefault((r["run_id"], r["link"], r["at"]), []).append(r)
            else:
                rest.append(r)
        if not any("timeline" in r for r in rest):
            if rest:
                self._executemany(c, _OUTCOME_INSERT, rest)
        else:
            # A target with notes or related records: one insert per row for the
            # ids, in order (the ids order the log).
            for r in rest:
                oid = self._insert_returning_id(c, _OUTCOME_RETURNING, r)
                if "timeline" in r:
                    r["timeline"]["outcome_id"] = oid
        for (run_id, link, at), members in pages.items():
            sp = _split_ref(members[0]["source_ref"])[0]
            tp = _split_ref(members[0]["target_ref"])[0]
            ids = [[m["source_ref"][len(sp):], m["target_ref"][len(tp):]] for m in members]
            page = {
                "run_id": run_id, "link": link, "source_ref": sp, "target_ref": tp,
                "action": "created", "status": "ok", "fields": dumps({"page": ids}),
                "message": None, "at": at, "records": len(ids),
            }
            pid = self._insert_returning_id(c, _PAGE_INSERT, page)
            i = S.identities
            c.execute(
                sa.update(i)
                .where(i.c.link == link, self.in_keys(i.c.source_id, [x[0] for x in ids]))
                .values(created_in=pid)
            )

    def _timeline_from(self, c: sa.Connection) -> int | None:
        """The first outcome id whose timeline entry is rendered from it; None on a
        state older than v6 (a read-only store does not upgrade)."""
        got: int | None = getattr(self, "_timeline_from_id", None)
        if got is None:
            v = c.execute(sa.select(S.meta.c.value).where(S.meta.c.key == S.TIMELINE_FROM))
            value = v.scalar()
            if value is not None:
                got = self._timeline_from_id = int(value)
        return got


    def outcomes(
        self,
        *,
        link: str | None = None,
        status: str | None = None,
        record: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        o = S.outcomes
        with self.connect() as c:
            v6 = self._timeline_from(c) is not None  # a read-only store may be older
            q = sa.select(*(col for col in o.c if v6 or col.name != "records"))
            q = q.order_by(o.c.id.desc()).limit(limit)
            if link:
                q = q.where(o.c.link == link)
            if status:
                q = q.where(sa.or_(o.c.status == status, o.c.action == status))
            if record:
                q = q.where(sa.or_(o.c.source_ref == record, o.c.target_ref == record))
            rows = expand_pages(dict(r._mapping) for r in c.execute(q))
            if record and v6 and status in (None, "ok", "created"):
                rows += [e for e in page_entries(self, c, record) if link in (None, e["link"])]
                rows.sort(key=lambda r: r["id"], reverse=True)
            rows = rows[:limit]
            created = created_values(self, c, rows)
        for r in rows:
            r["fields"] = expand_fields(
                json.loads(r["fields"]), created.get((r["link"], r["source_ref"]))
            )
        return rows

    def run_logged_refs(self, c: sa.Connection, run_id: int, refs: Sequence[str]) -> set[str]:
        """Which of the source refs already have an outcome logged by run ``run_id``
        (on the caller's connection: apply gathers all it reads on one)."""
        o, i = S.outcomes, S.identities
        if not refs:
            return set()
        q = sa.select(o.c.source_ref).where(
            o.c.run_id == run_id, self.in_keys(o.c.source_ref, list(refs))
        )
        found: set[str] = set(c.execute(q).scalars())
        by_prefix: dict[str, list[str]] = {}
        for ref in refs:
            prefix, rid = _split_ref(ref)
            by_prefix.setdefault(prefix, []).append(rid)
        for prefix, rids in by_prefix.items():
            pages = c.execute(sa.select(o.c.id, o.c.link).where(
                o.c.source_ref == prefix, o.c.run_id == run_id, o.c.records.is_not(None))).all()
            for link in {p[1] for p in pages}:
                q = sa.select(i.c.source_id).where(
                    i.c.link == link, self.in_keys(i.c.source_id, rids),
                    i.c.created_in.in_([p[0] for p in pages if p[1] == link]),
                )
                found.update(prefix + sid for sid in c.execute(q).scalars())
        return found

    def runs(self, link: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        r = S.runs
        q = sa.select(r).order_by(r.c.id.desc()).limit(limit)
        if link:
            q = q.where(r.c.link == link)
        with self.connect() as c:
            out = [dict(x._mapping) for x in c.execute(q)]
        for x in out:
            x["counts"] = json.loads(x["counts"])
        return out

    def last_runs(self, c: sa.Connection) -> dict[str, dict[str, Any]]:
        """The newest run of each link."""
        r = S.runs
        newest = sa.select(sa.func.max(r.c.id)).group_by(r.c.link).scalar_subquery()
        out = {}
        for x in c.execute(sa.select(r).where(r.c.id.in_(newest))):
            d = dict(x._mapping)
            d["counts"] = json.loads(d["counts"] or "{}")
            out[d["link"]] = d
        return out

    def outcome_counts(self, c: sa.Connection) -> dict[tuple[str, str], int]:
        o = S.outcomes
        n = sa.func.sum(sa.func.coalesce(o.c.records, 1))  # a page row counts its records
        q = sa.select(o.c.link, o.c.status, n).group_by(o.c.link, o.c.status)
        return {(link, status): n for link, status, n in c.execute(q)}

    # -- activities (record timelines) ------------------------------------------
    def add_activities(self, c: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Timeline rows; one with ``text`` '' is its outcome's (``outcome_id``) entry,
        rendered from it when read."""
        if rows:
            c.execute(_ACTIVITY_INSERT, list(rows))

    def _activity_columns(self, c: sa.Connection) -> list[Any]:
        a = S.activities
        v6 = self._timeline_from(c) is not None
        return [a.c[n] for n in ACTIVITY_COLUMNS if v6 or n != "outcome_id"]

    def undelivered_activities(
        self, c: sa.Connection, link: str, prefix: str, limit: int
    ) -> list[tuple[int, str, str]]:
        """Entries of ``link`` waiting to be written into the target, oldest first."""
        a, o = S.activities, S.outcomes
        q = (
            sa.select(a.c.id, a.c.record_ref, a.c.text, *o.c)
            .select_from(a.outerjoin(o, o.c.id == a.c.outcome_id))
            .where(
                a.c.deliver.is_(True),
                a.c.delivered_at.is_(None),
                a.c.link == link,
                a.c.record_ref.startswith(prefix, autoescape=True),
            )
            .order_by(a.c.id)
            .limit(limit)
        )
        rows = [(int(r[0]), str(r[1]), str(r[2]), dict(zip(o.c.keys(), r[3:], strict=True)))
                for r in c.execute(q)]
        created = created_values(self, c, [x[3] for x in rows if not x[2] and x[3]["id"]])
        out = []
        for aid, ref, text, orow in rows:
            if not text and orow["id"] is not None:
                text = outcome_text(orow, created.get((orow["link"], orow["source_ref"]))) or ""
            out.append((aid, ref, text))
        return out

    def mark_activities_delivered(
        self, c: sa.Connection, done: Sequence[tuple[int, str | None]], now: datetime
    ) -> None:
        """``(activity id, its id in the system)`` pairs: delivered now."""
        a = S.activities
        stmt = (
            sa.update(a)
            .where(a.c.id == sa.bindparam("aid"))
            .values(delivered_at=now, external_id=sa.bindparam("ext"))
        )
        if done:
            c.execute(stmt, [{"aid": i, "ext": ext} for i, ext in done])

    def activities_mentioning(
        self, c: sa.Connection, refs: Sequence[str]
    ) -> set[tuple[str, str]]:
        """``(link, record_ref)`` of entries naming ``refs`` as a related record."""
        a = S.activities
        out: set[tuple[str, str]] = set()
        for chunk in chunks(list(dict.fromkeys(refs)), 100):
            q = sa.select(a.c.link, a.c.record_ref).where(mentioning(chunk))
            out.update((str(x[0]), str(x[1])) for x in c.execute(q))
        return out

    def delivered_activities_of(self, c: sa.Connection, refs: Sequence[str]) -> list[
        tuple[str, str]
    ]:
        """``(record_ref, external id)`` of entries about ``refs`` written into a system."""
        a = S.activities
        q = sa.select(a.c.record_ref, a.c.external_id).where(
            a.c.external_id.is_not(None), activity_refs(refs)
        )
        return [(str(r[0]), str(r[1])) for r in c.execute(q)]

    def activities(self, record: str, limit: int = 100) -> list[dict[str, Any]]:
        """A record's timeline, newest first: its outcomes as source or target, told
        in words, and the rows on it or naming it (delivered notes, entries naming
        it as a related record, erasure entries, entries stored before v6).

        A derived entry's ``id`` is its outcome's; a row's is its own.
        """
        a, o = S.activities, S.outcomes
        with self.connect() as c:
            cols = self._activity_columns(c)
            q = sa.select(*cols).where(activity_refs([record])).order_by(a.c.id.desc())
            rows = [dict(r._mapping) for r in c.execute(q.limit(limit))]
            since = self._timeline_from(c)
            if since is None:  # a state older than v6: every entry is a row
                return rows
            told = sa.select(o).where(
                sa.or_(o.c.source_ref == record, o.c.target_ref == record),
                o.c.target_ref.is_not(None),
                o.c.action.in_(TIMELINE_ACTIONS),
                o.c.id >= since,
            )
            outs = {
                r.id: dict(r._mapping)
                for r in c.execute(told.order_by(o.c.id.desc()).limit(limit))
            }
            outs.update({e["id"]: e for e in page_entries(self, c, record)})
            have = {r["outcome_id"] for r in rows}
            if missing := [i for i in outs if i not in have]:
                # Their rows (a delivered note) no longer name the record (erasure).
                q = sa.select(*cols).where(self.in_keys(a.c.outcome_id, missing))
                rows += [dict(r._mapping) for r in c.execute(q)]
            if need := [r["outcome_id"] for r in rows if r["outcome_id"] is not None
                        and r["outcome_id"] not in outs and not r["text"]]:
                q = sa.select(o).where(self.in_keys(o.c.id, need))
                outs.update({r.id: dict(r._mapping) for r in c.execute(q)})
            created = created_values(self, c, outs.values())
        entries: list[dict[str, Any]] = []
        for r in rows:
            orow = outs.get(r["outcome_id"])
            if not r["text"] and orow is not None:
                r["text"] = outcome_text(
                    orow, created.get((orow["link"], orow["source_ref"]))
                ) or ""
            entries.append(r)
        have = {r["outcome_id"] for r in rows}
        for oid, orow in outs.items():
            if oid in have:
                continue
            text = outcome_text(orow, created.get((orow["link"], orow["source_ref"])))
            if text is None:
                continue
            entries.append({
                "id": oid, "link": orow["link"], "record_ref": orow["target_ref"],
                "at": orow["at"], "kind": orow["action"], "text": text, "deliver": False,
                "delivered_at": None, "external_id": None,
                "mentions": f" {orow['source_ref']} " if orow["source_ref"] else None,
                "outcome_id": oid,
            })
        # Newest first; within one instant (one batch) in the order logged.
        entries.sort(key=lambda e: (e["at"], e.get("outcome_id") or e["id"]), reverse=True)
        return entries[:limit]
