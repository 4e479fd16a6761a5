"""Administration: API tokens, the audit trail, link switches, the scheduler, quotas.

Reads and small admin writes for the HTTP API and `crmsync status|retry|token`.
Writers take the caller's connection so the audit row commits with the change.
"""

from __future__ import annotations

import json
import zlib
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from crmsync.state import schema as S
from crmsync.state.db import Database, dumps, utcnow

# Session advisory lock held by the one active scheduler (PostgreSQL).
_SCHEDULER_LOCK = zlib.crc32(b"crmsync-scheduler")

class AdminMixin(Database):
    """Tokens, audit rows, the per-link runtime state, quota counters, the scheduler lock."""

    # -- tokens ------------------------------------------------------------
    def add_token(
        self, c: sa.Connection, name: str, role: str, token_hash: str, *, now: datetime
    ) -> None:
        c.execute(
            sa.insert(S.tokens).values(
                name=name, role=role, token_hash=token_hash, created_at=now
            )
        )

    def active_token_named(self, c: sa.Connection, name: str) -> bool:
        t = S.tokens
        q = sa.select(t.c.id).where(t.c.name == name, t.c.revoked_at.is_(None)).limit(1)
        return c.execute(q).first() is not None

    def token_by_hash(self, token_hash: str) -> dict[str, Any] | None:
        """The live (not revoked) token with this hash: ``{name, role}``."""
        t = S.tokens
        q = sa.select(t.c.name, t.c.role).where(
            t.c.token_hash == token_hash, t.c.revoked_at.is_(None)
        )
        with self.connect() as c:
            row = c.execute(q).first()
        return dict(row._mapping) if row is not None else None

    def list_tokens(self, *, include_revoked: bool = False) -> list[dict[str, Any]]:
        t = S.tokens  # never the hash
        q = sa.select(t.c.id, t.c.name, t.c.role, t.c.created_at, t.c.revoked_at).order_by(t.c.id)
        if not include_revoked:
            q = q.where(t.c.revoked_at.is_(None))
        with self.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def revoke_token(self, c: sa.Connection, name: str, *, now: datetime) -> int:
        t = S.tokens
        res = c.execute(
            sa.update(t).where(t.c.name == name, t.c.revoked_at.is_(None)).values(revoked_at=now)
        )
        return res.rowcount or 0

    # -- audit -------------------------------------------------------------
    def add_audit(
        self,
        c: sa.Connection,
        actor: str,
        action: str,
        target: str | None = None,
        detail: Any = None,
        *,
        now: datetime | None = None,
    ) -> None:
        c.execute(
            sa.insert(S.audit).values(
                at=now or utcnow(),
                actor=actor,
                action=action,
                target=target,
                detail=None if detail is None else dumps(detail),
            )
        )

    def audit_rows(self, limit: int = 100) -> list[dict[str, Any]]:
        a = S.audit
        with self.connect() as c:
            rows = [
                dict(r._mapping)
                for r in c.execute(sa.select(a).order_by(a.c.id.desc()).limit(limit))
            ]
        for r in rows:
            r["detail"] = json.loads(r["detail"]) if r["detail"] else None
        return rows

    # -- link state --------------------------------------------------------
    def link_enabled_overrides(self) -> dict[str, bool]:
        """Links switched on or off at runtime (API/CLI); these win over the config."""
        t = S.link_state
        with self.connect() as c:
            if self.readonly and not sa.inspect(c).has_table(t.name):
                return {}  # a dry run against an older, not yet upgraded state
            rows = c.execute(sa.select(t.c.link, t.c.enabled).where(t.c.enabled.is_not(None)))
            return {r.link: bool(r.enabled) for r in rows}

    def link_states(self) -> dict[str, dict[str, Any]]:
        t = S.link_state
        with self.connect() as c:
            return {r.link: dict(r._mapping) for r in c.execute(sa.select(t))}

    def set_link_enabled(
        self, c: sa.Connection, link: str, enabled: bool, *, actor: str, now: datetime
    ) -> None:
        self._link_state_upsert(
            c, link, {"enabled": enabled, "changed_by": actor, "changed_at": now}
        )

    def request_run(self, c: sa.Connection, link: str, *, now: datetime) -> None:
        """Make the link due now; the scheduler runs due links."""
        self._link_state_upsert(c, link, {"next_run_at": now})

    def _link_state_upsert(self, c: sa.Connection, link: str, values: dict[str, Any]) -> None:
        ins = self._upsert(S.link_state).values(link=link, **values)
        c.execute(
            ins.on_conflict_do_update(
                index_elements=["link"], set_={k: getattr(ins.excluded, k) for k in values}
            )
        )


    # -- the scheduler (service/scheduler.py) ----------------------------------
    def link_schedules(self, c: sa.Connection) -> dict[str, Any]:
        """Per link with runtime state: its row (``next_run_at``, ``last_run_at``)."""
        t = S.link_state
        q = sa.select(t.c.link, t.c.next_run_at, t.c.last_run_at)
        return {r.link: r for r in c.execute(q)}

    def save_scheduled_run(
        self, c: sa.Connection, link: str, ran_at: datetime, next_at: datetime | None
    ) -> None:
        """The link ran at ``ran_at`` and is due again at ``next_at`` (None: on request)."""
        t = S.link_state
        res = c.execute(
            sa.update(t).where(t.c.link == link).values(next_run_at=next_at, last_run_at=ran_at)
        )
        if not res.rowcount:
            c.execute(sa.insert(t).values(link=link, next_run_at=next_at, last_run_at=ran_at))

    def take_scheduler_lock(self) -> sa.Connection | None:
        """Try to become the one active scheduler (PostgreSQL): the connection holding
        the session advisory lock, or None when another scheduler holds it. The lock
        lasts as long as the connection; closing it hands the role over."""
        conn = self.engine.connect()
        got = conn.execute(sa.select(sa.func.pg_try_advisory_lock(_SCHEDULER_LOCK))).scalar()
        conn.commit()
        if got:
            return conn
        conn.close()
        return None

    # -- quotas (engine/quota.py) ----------------------------------------------
    def quota_row(self, c: sa.Connection, key: str) -> tuple[datetime, int] | None:
        """A quota counter: ``(window_start, calls)``, or None before its first call."""
        t = S.quota_use
        row = c.execute(
            sa.select(t.c.window_start, t.c.calls).where(t.c.system == key)
        ).first()
        return None if row is None else (row.window_start, row.calls)

    def add_quota_calls(self, key: str, start: datetime, calls: int) -> None:
        """Add ``calls`` to the counter of the window starting at ``start``."""
        t = S.quota_use
        # One atomic upsert: concurrent workers add up, and the first call of a
        # new window starts the count afresh.
        ins = self._upsert(t).values(system=key, window_start=start, calls=calls)
        stmt = ins.on_conflict_do_update(
            index_elements=["system"],
            set_={
                "calls": sa.case((t.c.window_start == start, t.c.calls + calls), else_=calls),
                "window_start": start,
            },
        )
        with self.begin() as c:
            c.execute(stmt)

    def add_rate_calls(self, key: str, calls: int, rate: float, now: datetime) -> None:
        """Add ``calls`` to a leaky bucket paid off at ``rate`` calls/s: its time
        (kept in ``window_start``) moves to ``max(its time, now) + calls / rate``."""
        t = S.quota_use
        with self.begin() as c:
            c.execute(
                self._upsert(t)
                .values(system=key, window_start=now, calls=0)
                .on_conflict_do_nothing(index_elements=["system"])
            )
            # Row lock (PostgreSQL): concurrent workers add their calls one after
            # the other, so none is lost from the bucket.
            row = c.execute(
                sa.select(t.c.window_start, t.c.calls).where(t.c.system == key).with_for_update()
            ).one()
            tat = max(row.window_start, now) + timedelta(seconds=calls / rate)
            c.execute(
                sa.update(t).where(t.c.system == key).values(
                    window_start=tat, calls=row.calls + calls
                )
            )
