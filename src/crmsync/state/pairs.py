"""Pairs: the identity map with shadows, capture cursors, and trigger memory.

A pair says which source record is which target record and holds the values
both had at the last successful sync (the shadow, JSON in target form).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import sqlalchemy as sa

from crmsync.state import schema as S
from crmsync.state.db import Database, chunks, dumps, utcnow

IDENTITY_COLUMNS = (
    "link", "source_id", "target_id", "shadow", "source_version", "target_version",
    "deleted", "updated_at", "first_shadow",
)


@dataclass(slots=True)
class Identity:
    source_id: str
    target_id: str | None
    shadow: dict[str, Any]
    source_version: str | None
    target_version: str | None
    deleted: bool

    def row(self, shadow: dict[str, Any]) -> dict[str, Any]:
        """This pair as a ``save_identities`` row with another shadow (erasure scrubs)."""
        return {
            "source_id": self.source_id,
            "target_id": self.target_id,
            "shadow": shadow,
            "source_version": self.source_version,
            "target_version": self.target_version,
            "deleted": self.deleted,
        }


class PairsMixin(Database):
    """Cursors, identities with their shadows, and the trigger fields last seen."""

    # -- cursors -----------------------------------------------------------
    def get_cursor(self, c: sa.Connection, link: str, side: str, kind: str) -> Any:
        v = c.execute(
            sa.select(S.cursors.c.value).where(
                S.cursors.c.link == link, S.cursors.c.side == side, S.cursors.c.kind == kind
            )
        ).scalar()
        return json.loads(v) if v is not None else None

    def set_cursor(self, c: sa.Connection, link: str, side: str, kind: str, value: Any) -> None:
        ins = self._upsert(S.cursors).values(
            link=link, side=side, kind=kind, value=dumps(value), updated_at=utcnow()
        )
        c.execute(
            ins.on_conflict_do_update(
                index_elements=["link", "side", "kind"],
                set_={"value": ins.excluded.value, "updated_at": ins.excluded.updated_at},
            )
        )

    # -- identities and shadows -------------------------------------------
    def live_ids(self, c: sa.Connection, link: str, side: str) -> list[str]:
        """Ids on one side of every pair not yet known as deleted (for hard-delete checks)."""
        i = S.identities
        col = i.c.source_id if side == "source" else i.c.target_id
        q = sa.select(col).where(i.c.link == link, i.c.deleted.is_(False), col.is_not(None))
        return [str(r[0]) for r in c.execute(q)]

    def applied_versions(
        self, c: sa.Connection, link: str, side: str, ids: Sequence[str]
    ) -> dict[str, str]:
        """Of ``ids`` on one side of ``link``, the version each pair last applied."""
        t = S.identities
        if not ids:
            return {}
        keys, col = list(ids), t.c.source_id
        if side != "source":
            # Through the target index first (SQLite would scan a WITHOUT ROWID
            # table for whole rows found by target id).
            keys, col = self.source_ids_of(c, link, keys), t.c.source_id
        q = sa.select(t.c.source_id, t.c.target_id, t.c.source_version, t.c.target_version).where(
            t.c.link == link, self.in_keys(col, keys)
        )
        out: dict[str, str] = {}
        for sid, tid, sver, tver in c.execute(q):
            rid, ver = (sid, sver) if side == "source" else (tid, tver)
            if ver is not None and rid is not None:
                out[str(rid)] = str(ver)
        return out

    def identities_by_source(
        self, c: sa.Connection, link: str, ids: Sequence[str]
    ) -> dict[str, Identity]:
        return self._identities(c, link, S.identities.c.source_id, ids, key="source")

    def identities_by_target(
        self, c: sa.Connection, link: str, ids: Sequence[str]
    ) -> dict[str, Identity]:
        return self._identities(c, link, S.identities.c.target_id, ids, key="target")

    def _identities(
        self, c: sa.Connection, link: str, col: sa.Column[Any], ids: Sequence[str], key: str
    ) -> dict[str, Identity]:
        t = S.identities
        out: dict[str, Identity] = {}
        if key == "target":
            # Through the target index alone (it holds the key): SQLite's planner,
            # asked for the whole row of a WITHOUT ROWID table, would scan the link.
            ids = self.source_ids_of(c, link, ids)
            col = t.c.source_id
        q = sa.select(
            t.c.source_id, t.c.target_id, t.c.shadow, t.c.source_version, t.c.target_version,
            t.c.deleted,
        ).where(t.c.link == link, self.in_keys(col, list(ids)))
        for r in c.execute(q):
            ident = Identity(r[0], r[1], self.decode_shadow(c, r[2]), r[3], r[4], bool(r[5]))
            out[ident.source_id if key == "source" else ident.target_id or ""] = ident
        return out

    def source_ids_of(self, c: sa.Connection, link: str, target_ids: Sequence[str]) -> list[str]:
        """The source ids paired with ``target_ids`` (read from the target index only)."""
        t = S.identities
        q = sa.select(t.c.source_id).where(
            t.c.link == link, self.in_keys(t.c.target_id, list(target_ids))
        )
        return list(c.execute(q).scalars())

    def save_identities(
        self, c: sa.Connection, link: str, rows: Sequence[dict[str, Any]], *, scrub: bool = False
    ) -> None:
        """Upsert identity rows (source_id, target_id, shadow dict, versions, deleted;
        ``first_shadow`` '' for a pair crmsync just created, its log entry's values).

        The first change of such a pair's shadow keeps the created values in
        ``first_shadow``; with ``scrub`` (an erasure) they are dropped instead.
        """
        if not rows:
            return
        if scrub:
            i = S.identities
            sids = [r["source_id"] for r in rows]
            c.execute(
                sa.update(i)
                .where(i.c.link == link, self.in_keys(i.c.source_id, sids))
                .values(first_shadow=None)
            )
        now = self.ts(utcnow())
        shadows = iter(self.encode_shadows(
            c, [r["shadow"] for r in rows if not isinstance(r["shadow"], str)]
        ))
        payload = [
            {
                "link": link,
                "source_id": r["source_id"],
                "target_id": r["target_id"],
                "shadow": r["shadow"] if isinstance(r["shadow"], str) else next(shadows),
                "source_version": r.get("source_version"),
                "target_version": r.get("target_version"),
                "deleted": bool(r.get("deleted", False)),
                "updated_at": now,
                "first_shadow": r.get("first_shadow"),
            }
            for r in rows
        ]
        if self.dialect != "sqlite":
            self._executemany(c, self._identity_upsert, payload)
            return
        # SQLite rewrites an index's entry for every column a SET names, changed or
        # not: a pair that may exist already is upserted without target_id (indexed)
        # and its target id set after only where it changed, or each shadow update
        # would also write a random page of the target index (half the state pages
        # of an incremental batch on a 1M-pair link). A pair crmsync just created
        # (first_shadow '') is new: inserted as before, its entry is new anyway.
        old = [r for r in payload if r["first_shadow"] != ""]
        new = [r for r in payload if r["first_shadow"] == ""]
        if old:
            self._executemany(c, self._identity_upsert_kept_target, old)
            self._executemany(
                c,
                self._identity_retarget,
                [{"new_target": r["target_id"], "pair_link": link, "pair_source": r["source_id"]}
                 for r in old],
            )
        if new:
            self._executemany(c, self._identity_upsert, new)

    @cached_property
    def _identity_upsert(self) -> Any:
        """The identity upsert, built once (``_executemany`` caches its compiled form)."""
        return self._identity_upsert_setting(IDENTITY_COLUMNS[2:-1])

    @cached_property
    def _identity_upsert_kept_target(self) -> Any:
        """SQLite: the identity upsert that leaves target_id as it is (``save_identities``)."""
        return self._identity_upsert_setting(IDENTITY_COLUMNS[3:-1])

    def _identity_upsert_setting(self, kept: Sequence[str]) -> Any:
        if self.dialect not in ("sqlite", "postgresql"):
            return None
        ins = self._upsert(S.identities).values(
            {k: sa.bindparam(k) for k in IDENTITY_COLUMNS}
        )
        t = S.identities
        # A created pair's values move to first_shadow when its shadow first changes.
        first = sa.case(
            (sa.and_(t.c.first_shadow == sa.literal_column("''"),
                     t.c.shadow != ins.excluded.shadow), t.c.shadow),
            else_=t.c.first_shadow,
        )
        return ins.on_conflict_do_update(
            index_elements=["link", "source_id"],
            set_={**{k: getattr(ins.excluded, k) for k in kept}, "first_shadow": first},
        )

    @cached_property
    def _identity_retarget(self) -> Any:
        """SQLite: a pair's new target id, where it changed (see ``save_identities``)."""
        t = S.identities
        new = sa.bindparam("new_target", type_=t.c.target_id.type)
        return (
            sa.update(t)
            .where(
                t.c.link == sa.bindparam("pair_link"),
                t.c.source_id == sa.bindparam("pair_source"),
                t.c.target_id.is_distinct_from(new),
            )
            .values(target_id=new)
        )

    def identity_pairs(
        self,
        c: sa.Connection,
        link: str,
        *,
        source_ids: Sequence[str] = (),
        target_ids: Sequence[str] = (),
    ) -> list[tuple[str, str]]:
        """``(source_id, target_id)`` of the link's pairs touching these ids (no shadows)."""
        t = S.identities
        out: list[tuple[str, str]] = []
        for col, ids in ((t.c.source_id, source_ids), (t.c.target_id, target_ids)):
            for chunk in chunks(list(dict.fromkeys(ids)), 500):
                q = sa.select(t.c.source_id, t.c.target_id).where(
                    t.c.link == link, col.in_(chunk), t.c.target_id.is_not(None)
                )
                out += [(r[0], r[1]) for r in c.execute(q)]
        return list(dict.fromkeys(out))

    # -- trigger memory ---------------------------------------------------------
    def trigger_seen(
        self, c: sa.Connection, link: str, ids: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        t = S.trigger_seen
        out: dict[str, dict[str, Any]] = {}
        q = sa.select(t.c.source_id, t.c.seen).where(
            t.c.link == link, self.in_keys(t.c.source_id, list(ids))
        )
        for sid, seen in c.execute(q):
            out[sid] = json.loads(seen)
        return out

    def save_trigger_seen(
        self, c: sa.Connection, link: str, rows: Sequence[tuple[str, dict[str, Any]]]
    ) -> None:
        if not rows:
            return
        now = utcnow()
        ins = self._upsert(S.trigger_seen)
        stmt = ins.on_conflict_do_update(
            index_elements=["link", "source_id"],
            set_={"seen": ins.excluded.seen, "updated_at": ins.excluded.updated_at},
        )
        c.execute(
            stmt,
            [{"link": link, "source_id": sid, "seen": dumps(v), "updated_at": now}
             for sid, v in rows],
        )

