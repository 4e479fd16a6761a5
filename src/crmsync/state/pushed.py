"""Webhooks and push-only systems: the replay ledger and the records they push.

Used by api/hooks.py and connectors/webhook.py. Writers take the caller's
connection: a delivery's replay row, its pushed records and its queued
messages commit together or not at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from functools import cached_property
from typing import Any

import sqlalchemy as sa

from crmsync.errors import StateError
from crmsync.state import schema as S
from crmsync.state.db import Database, chunks

PUSHED_COLUMNS = ("system", "object", "record_id", "fields", "deleted", "seq", "updated_at")


class PushedMixin(Database):
    """Replay ledger of webhook ids, and the records of push-only systems."""

    # Statements are built once (``_wh``): building Core statements per call
    # cost more than running them.
    @cached_property
    def _wh(self) -> dict[str, Any]:
        d, p = S.webhook_deliveries, S.pushed_records
        cols = (p.c.record_id, p.c.fields, p.c.deleted, p.c.seq, p.c.updated_at)
        system, obj = sa.bindparam("system"), sa.bindparam("object")
        upsert: Any = None
        if self.dialect in ("sqlite", "postgresql"):
            ins = self._upsert(p).values({k: sa.bindparam(k) for k in PUSHED_COLUMNS})
            upsert = ins.on_conflict_do_update(
                index_elements=["system", "object", "record_id"],
                set_={k: getattr(ins.excluded, k) for k in PUSHED_COLUMNS[3:]},
            )
        return {
            "seen": sa.select(sa.literal(1)).where(
                d.c.system == system, d.c.webhook_id == sa.bindparam("webhook_id")
            ),
            "deliver": sa.insert(d),
            "max_seq": sa.select(sa.func.max(p.c.seq)).where(p.c.system == system),
            "get": sa.select(p.c.fields, p.c.deleted, p.c.seq).where(
                p.c.system == system, p.c.object == obj, p.c.record_id == sa.bindparam("rid")
            ),
            "upsert": upsert,
            "changes": sa.select(*cols)
            .where(p.c.system == system, p.c.object == obj, p.c.seq > sa.bindparam("after"))
            .order_by(p.c.seq)
            .limit(sa.bindparam("n", type_=sa.Integer)),
            "scan0": sa.select(*cols)
            .where(p.c.system == system, p.c.object == obj, p.c.deleted.is_(False))
            .order_by(p.c.record_id)
            .limit(sa.bindparam("n", type_=sa.Integer)),
            "scan": sa.select(*cols)
            .where(
                p.c.system == system,
                p.c.object == obj,
                p.c.deleted.is_(False),
                p.c.record_id > sa.bindparam("after"),
            )
            .order_by(p.c.record_id)
            .limit(sa.bindparam("n", type_=sa.Integer)),
            "read": sa.select(*cols).where(
                p.c.system == system,
                p.c.object == obj,
                p.c.deleted.is_(False),
                p.c.record_id.in_(sa.bindparam("ids", expanding=True)),
            ),
            "count": sa.select(sa.func.count()).where(
                p.c.system == system, p.c.object == obj, p.c.deleted.is_(False)
            ),
        }

    # -- replay ledger -----------------------------------------------------
    def webhook_delivery_seen(self, c: sa.Connection, system: str, webhook_id: str) -> bool:
        q = self._wh["seen"]
        return c.execute(q, {"system": system, "webhook_id": webhook_id}).first() is not None

    def add_webhook_delivery(
        self, c: sa.Connection, system: str, webhook_id: str, *, now: datetime
    ) -> None:
        """Record an accepted delivery id; a concurrent twin fails on the primary key."""
        c.execute(
            self._wh["deliver"], {"system": system, "webhook_id": webhook_id, "received_at": now}
        )

    def prune_webhook_deliveries(self, c: sa.Connection, before: datetime) -> int:
        """Forget delivery ids received before ``before``.

        Safe once ``before`` is older than the timestamp tolerance (twice, for
        clock skew): a replay that old is refused by its signed timestamp.
        """
        d = S.webhook_deliveries
        return c.execute(sa.delete(d).where(d.c.received_at < before)).rowcount or 0

    # -- pushed records ----------------------------------------------------
    def lock_pushed_system(self, c: sa.Connection, system: str) -> None:
        """Serialise pushes to one system until the transaction ends.

        PostgreSQL: a transaction-scoped advisory lock on a stable hash of the
        name, so two pushes never compute the same next seq. SQLite: writers
        are serialised by the database already (nothing to do).
        """
        if self.dialect == "postgresql":
            digest = hashlib.sha256(f"crmsync.pushed:{system}".encode()).digest()
            key = int.from_bytes(digest[:8], "big", signed=True)
            c.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))

    def pushed_max_seq(self, c: sa.Connection, system: str) -> int:
        v = c.execute(self._wh["max_seq"], {"system": system}).scalar()
        return int(v) if v is not None else 0

    def pushed_get(
        self, c: sa.Connection, system: str, obj: str, record_id: str
    ) -> tuple[str, bool, int] | None:
        """``(fields JSON, deleted, seq)`` of one pushed record, or None."""
        row = c.execute(
            self._wh["get"], {"system": system, "object": obj, "rid": record_id}
        ).first()
        return None if row is None else (row[0], bool(row[1]), int(row[2]))

    def pushed_put(
        self,
        c: sa.Connection,
        system: str,
        obj: str,
        record_id: str,
        fields: str,
        *,
        deleted: bool,
        seq: int,
        now: datetime,
    ) -> None:
        row = {
            "system": system, "object": obj, "record_id": record_id, "fields": fields,
            "deleted": deleted, "seq": seq, "updated_at": self.ts(now),
        }
        if self._wh["upsert"] is None:
            raise StateError(
                f"state database {self.dialect!r} is not supported (use SQLite or PostgreSQL)"
            )
        self._executemany(c, self._wh["upsert"], [row])

    def pushed_changes(
        self, system: str, obj: str, after_seq: int, limit: int
    ) -> list[sa.Row[Any]]:
        """Pushed records (deleted ones too) with seq > ``after_seq``, in seq order."""
        with self.connect() as c:
            params = {"system": system, "object": obj, "after": after_seq, "n": limit}
            return list(c.execute(self._wh["changes"], params))

    def pushed_scan(
        self, system: str, obj: str, after_id: str | None, limit: int
    ) -> list[sa.Row[Any]]:
        """Live (not deleted) pushed records in record_id order after ``after_id``."""
        params: dict[str, Any] = {"system": system, "object": obj, "n": limit}
        if after_id is not None:
            params["after"] = after_id
        with self.connect() as c:
            return list(c.execute(self._wh["scan0" if after_id is None else "scan"], params))

    def pushed_read(self, system: str, obj: str, ids: Sequence[str]) -> list[sa.Row[Any]]:
        """Live pushed records by id (deleted and unknown ids are absent)."""
        out: list[sa.Row[Any]] = []
        with self.connect() as c:
            for chunk in chunks(list(dict.fromkeys(ids)), 500):
                params = {"system": system, "object": obj, "ids": list(chunk)}
                out += c.execute(self._wh["read"], params)
        return out

    def pushed_count(self, system: str, obj: str) -> int:
        with self.connect() as c:
            return int(c.execute(self._wh["count"], {"system": system, "object": obj}).scalar_one())

