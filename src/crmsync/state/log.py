"""The log: runs, per-record outcomes, and record timelines (activities)."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from crmsync.state import schema as S
from crmsync.state.db import Database, chunks, dumps, utcnow

OUTCOME_COLUMNS = (
    "run_id", "link", "source_ref", "target_ref", "action", "status", "fields", "message", "at",
)
# Built once: ``_executemany`` caches its compiled form (the apply hot path).
_OUTCOME_INSERT = sa.insert(S.outcomes).values({k: sa.bindparam(k) for k in OUTCOME_COLUMNS})


@functools.cache
def _activity_insert(columns: tuple[str, ...]) -> Any:
    """The timeline insert for rows with these keys, built once per shape
    (``_executemany`` caches its compiled form: the apply hot path)."""
    return sa.insert(S.activities).values({k: sa.bindparam(k) for k in columns})


def expand_fields(stored: Any) -> list[dict[str, Any]]:
    """Per-field outcomes from a log row.

    A create is stored compactly as ``{"created": <shadow>}`` (the same JSON
    text as the identity's shadow, encoded once); every field in it was
    written from nothing, and ``~rejected`` lists the fields refused.
    """
    if not isinstance(stored, dict):
        return list(stored)
    shadow = stored.get("created", {})
    out: list[dict[str, Any]] = [
        {"field": k, "status": "updated", "side": "target", "old": None, "new": v}
        for k, v in shadow.items()
        if not k.startswith("~") and v is not None  # created empty: nothing written
    ]
    for k, reason in shadow.get("~rejected", {}).items():
        out.append({"field": k, "status": "rejected", "reason": reason})
    return out


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
        if rows:
            self._executemany(c, _OUTCOME_INSERT, list(rows))

    def outcomes(
        self,
        *,
        link: str | None = None,
        status: str | None = None,
        record: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        o = S.outcomes
        q = sa.select(o).order_by(o.c.id.desc()).limit(limit)
        if link:
            q = q.where(o.c.link == link)
        if status:
            q = q.where(sa.or_(o.c.status == status, o.c.action == status))
        if record:
            q = q.where(sa.or_(o.c.source_ref == record, o.c.target_ref == record))
        with self.connect() as c:
            rows = [dict(r._mapping) for r in c.execute(q)]
        for r in rows:
            r["fields"] = expand_fields(json.loads(r["fields"]))
        return rows

    def run_logged_refs(self, c: sa.Connection, run_id: int, refs: Sequence[str]) -> set[str]:
        """Which of the source refs already have an outcome logged by run ``run_id``
        (on the caller's connection: apply gathers all it reads on one)."""
        o = S.outcomes
        found: set[str] = set()
        for chunk in chunks(list(refs), 500):
            q = sa.select(o.c.source_ref).where(o.c.run_id == run_id, o.c.source_ref.in_(chunk))
            found.update(r[0] for r in c.execute(q))
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
        q = sa.select(o.c.link, o.c.status, sa.func.count()).group_by(o.c.link, o.c.status)
        return {(link, status): n for link, status, n in c.execute(q)}

    # -- activities (record timelines) ------------------------------------------
    def add_activities(self, c: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Insert timeline rows (all with the same keys; ``at`` as ``ts`` gives it)."""
        if rows:
            self._executemany(c, _activity_insert(tuple(rows[0])), list(rows))

    def undelivered_activities(
        self, c: sa.Connection, link: str, prefix: str, limit: int
    ) -> list[tuple[int, str, str]]:
        """Entries of ``link`` waiting to be written into the target, oldest first."""
        a = S.activities
        q = (
            sa.select(a.c.id, a.c.record_ref, a.c.text)
            .where(
                a.c.deliver.is_(True),
                a.c.delivered_at.is_(None),
                a.c.link == link,
                a.c.record_ref.startswith(prefix, autoescape=True),
            )
            .order_by(a.c.id)
            .limit(limit)
        )
        return [(int(r[0]), str(r[1]), str(r[2])) for r in c.execute(q)]

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
        """A record's timeline, newest first: entries on it and entries naming it
        (the target's entries name their source and related records)."""
        a = S.activities
        q = sa.select(a).where(activity_refs([record])).order_by(a.c.id.desc()).limit(limit)
        with self.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

