"""GDPR erasure (engine/graph.py, engine/erase.py, the apply hook).

Refs are "system.object:id" text, as in the outcomes table. Ids are not
personal values; everything else about an erased record is scrubbed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from crmsync.model import REQUEST_ACTIONS
from crmsync.state import schema as S
from crmsync.state.db import Database, chunks, dumps
from crmsync.state.log import (
    activity_refs,
    created_values,
    expand_fields,
    page_entries,
    split_from_page,
)
from crmsync.state.pairs import Identity


class ErasureMixin(Database):
    """Which records were erased, and scrubbing what the state holds about them."""

    def _erased_table_missing(self, c: sa.Connection) -> bool:
        # A dry run may read a state not yet upgraded to v5 (read-only: no migration).
        if not self.readonly:
            return False
        missing: bool | None = getattr(self, "_no_erased_table", None)
        if missing is None:
            missing = self._no_erased_table = not sa.inspect(c).has_table(S.erased.name)
        return missing

    def erased_refs(self, c: sa.Connection, refs: Iterable[str]) -> set[str]:
        """Which of ``refs`` were erased (one query, the refs one parameter)."""
        if self._erased_table_missing(c):
            return set()
        e = S.erased
        keys = list(dict.fromkeys(refs))
        if not keys:
            return set()
        return set(
            c.execute(sa.select(e.c.record_ref).where(self.in_keys(e.c.record_ref, keys)))
            .scalars()
        )

    def erased_pairs(
        self,
        c: sa.Connection,
        source_prefix: str,
        target_prefix: str,
        pairs: dict[str, Identity | None],
    ) -> list[str]:
        """Source ids of ``pairs`` whose source or target record was erased."""
        if not pairs:
            return []
        refs = [source_prefix + sid for sid in pairs]
        refs += [target_prefix + i.target_id for i in pairs.values() if i and i.target_id]
        gone = self.erased_refs(c, refs)
        if not gone:
            return []
        return [
            sid
            for sid, ident in pairs.items()
            if source_prefix + sid in gone
            or (ident is not None and ident.target_id and target_prefix + ident.target_id in gone)
        ]

    def mark_erased(
        self, c: sa.Connection, refs: Sequence[str], *, by: str, now: datetime
    ) -> None:
        """Remember erased records; the first erasure's time and actor are kept."""
        if not refs:
            return
        ins = self._upsert(S.erased)
        c.execute(
            ins.on_conflict_do_nothing(index_elements=["record_ref"]),
            [{"record_ref": r, "erased_at": now, "erased_by": by} for r in refs],
        )

    def record_known(
        self, c: sa.Connection, ref: str, sides: Sequence[tuple[str, str]]
    ) -> bool:
        """Whether crmsync's state holds anything about ``ref`` (``system.object:id``):
        a pairing, an erasure, trigger memory, a message that was tried, or an outcome
        other than a sync request's trace. ``sides`` are the ``(link, side)`` the
        record's object takes part in. Erasure asks this before it marks anything."""
        rid = ref.split(":", 1)[1]
        e, i, m, o, t = S.erased, S.identities, S.messages, S.outcomes, S.trigger_seen
        if not self._erased_table_missing(c) and c.execute(
            sa.select(e.c.record_ref).where(e.c.record_ref == ref).limit(1)
        ).first():
            return True
        for link, side in sides:
            col = i.c.source_id if side == "source" else i.c.target_id
            if c.execute(sa.select(i.c.link).where(i.c.link == link, col == rid).limit(1)).first():
                return True
            # A message that was tried may quote values (its error); one only queued,
            # never read, says nothing about the record.
            tried = sa.or_(m.c.attempts > 0, m.c.last_error.is_not(None))
            if c.execute(
                sa.select(m.c.id).where(
                    m.c.link == link, m.c.side == side, m.c.record_id == rid, tried
                ).limit(1)
            ).first():
                return True
            if side == "source" and c.execute(
                sa.select(t.c.link).where(t.c.link == link, t.c.source_id == rid).limit(1)
            ).first():
                return True
        # Sync requests leave "queued"/"skipped"/"not found" traces naming the id
        # whether or not it exists: those do not make a record known.
        traces = sa.or_(
            o.c.action.not_in(REQUEST_ACTIONS), o.c.run_id.is_not(None)
        )
        q = sa.select(o.c.id).where(
            sa.or_(o.c.source_ref == ref, o.c.target_ref == ref), traces
        ).limit(1)
        return c.execute(q).first() is not None

    def erased_rows(self, c: sa.Connection, refs: Sequence[str]) -> list[dict[str, Any]]:
        e = S.erased
        q = sa.select(e).where(e.c.record_ref.in_(list(refs))).order_by(e.c.record_ref)
        return [dict(r._mapping) for r in c.execute(q)]

    def erase_outcome_values(self, c: sa.Connection, refs: Sequence[str], marker: str) -> int:
        """Outcomes of these records keep action, status and time; values and message go.

        Each field keeps its name (not personal) with status ``erased``.
        """
        o = S.outcomes
        n = 0
        for ref in dict.fromkeys(refs):  # creates logged in a page get a row of their own
            for entry in page_entries(self, c, ref):
                split_from_page(self, c, entry)
        for chunk in chunks(list(dict.fromkeys(refs)), 250):
            rows = [
                dict(r._mapping)
                for r in c.execute(
                    sa.select(o.c.id, o.c.link, o.c.source_ref, o.c.fields).where(
                        sa.or_(o.c.source_ref.in_(chunk), o.c.target_ref.in_(chunk)),
                        o.c.action != "erased",  # the erasure's own entries hold no values
                    )
                )
            ]
            # A create logged as its pair's values: the field names are the pair's.
            created = created_values(self, c, rows)
            for r in rows:
                oid, stored = r["id"], r["fields"]
                try:
                    names = [
                        f.get("field")
                        for f in expand_fields(
                            json.loads(stored or "[]"), created.get((r["link"], r["source_ref"]))
                        )
                    ]
                except (ValueError, AttributeError, TypeError):
                    names = []
                fields = [{"field": f, "status": "erased"} for f in dict.fromkeys(names) if f]
                c.execute(
                    sa.update(o).where(o.c.id == oid).values(fields=dumps(fields), message=marker)
                )
                n += 1
        return n

    def erased_outcome_refs(self, c: sa.Connection, refs: Sequence[str]) -> set[tuple[str, str]]:
        """``(source_ref, target_ref)`` of the ``erased`` outcomes already logged for these."""
        o = S.outcomes
        out: set[tuple[str, str]] = set()
        for chunk in chunks(list(dict.fromkeys(refs)), 500):
            q = sa.select(o.c.source_ref, o.c.target_ref).where(
                o.c.action == "erased", o.c.source_ref.in_(chunk)
            )
            out.update((r[0], r[1]) for r in c.execute(q))
        return out

    def delete_record_messages(
        self, c: sa.Connection, link: str, side: str, ids: Sequence[str]
    ) -> int:
        """Every message (pending, running or failed) of these records leaves the queue."""
        m = S.messages
        n = 0
        for chunk in chunks(list(dict.fromkeys(ids)), 500):
            res = c.execute(
                sa.delete(m).where(m.c.link == link, m.c.side == side, m.c.record_id.in_(chunk))
            )
            n += res.rowcount or 0
        return n

    def delete_trigger_seen(self, c: sa.Connection, link: str, ids: Sequence[str]) -> int:
        t = S.trigger_seen
        n = 0
        for chunk in chunks(list(dict.fromkeys(ids)), 500):
            res = c.execute(sa.delete(t).where(t.c.link == link, t.c.source_id.in_(chunk)))
            n += res.rowcount or 0
        return n

    def erase_activity_text(self, c: sa.Connection, refs: Sequence[str], marker: str) -> int:
        a = S.activities
        n = 0
        for chunk in chunks(list(dict.fromkeys(refs)), 100):
            res = c.execute(
                sa.update(a)
                .where(activity_refs(chunk), a.c.kind != "erased")
                .values(text=marker, mentions=None, external_id=None)
            )
            n += res.rowcount or 0
        return n

    def add_erasure_activities(
        self, c: sa.Connection, rows: Sequence[tuple[str, str]], text: str, *, now: datetime
    ) -> None:
        """An ``erased`` entry on each ``(link, record_ref)`` timeline, kept by crmsync only."""
        if rows:
            c.execute(
                sa.insert(S.activities),
                [
                    {"link": link, "record_ref": ref, "at": now, "kind": "erased", "text": text,
                     "deliver": False}
                    for link, ref in rows
                ],
            )
