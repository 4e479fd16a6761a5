"""The durable queue: enqueue, claim with a lease, finish, release, retry, fail, recover.

A message names a changed record; apply reads the record's current values, so
a newer change to a waiting record collapses into its one pending message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

import sqlalchemy as sa

from crmsync.state import schema as S
from crmsync.state.db import Database, chunks, utcnow

# The error a message is put back with when its system does not answer (no
# attempt spent): such messages mark their link as paused.
UNREACHABLE = "system unreachable"


@dataclass(slots=True)
class Message:
    id: int
    link: str
    side: str
    record_id: str
    op: str
    version: str | None
    attempts: int
    updated_at: datetime


def _pending_twin(m: sa.Table) -> sa.Select[Any]:
    """A pending message for the same record as ``m``'s row (use ``.exists()``).

    Apply reads current values, so such a message supersedes ``m``'s row; and
    only one pending message per record may exist.
    """
    p = m.alias("p")
    return sa.select(sa.literal(1)).where(
        p.c.link == m.c.link,
        p.c.side == m.c.side,
        p.c.record_id == m.c.record_id,
        p.c.status == "pending",
    )


class QueueMixin(Database):
    """The queue's writes (claim, finish, release, retry) and its views."""

    # (link, side) -> the queues of the rules watching that side's object
    # (``rule:NAME``); set by the engine from the config.
    rule_feeds: dict[tuple[str, str], tuple[str, ...]] = {}
    # (system, object) -> the queues of the rules watching it (``rules.memory``).
    rule_watch: dict[tuple[str, str], tuple[str, ...]] = {}

    def enqueue(
        self,
        c: sa.Connection,
        link: str,
        side: str,
        items: Iterable[tuple[str, str, str | None]],
        *,
        now: datetime | None = None,
    ) -> int:
        """Queue ``(record_id, op, version)`` changes; a waiting one per record collapses.

        The rules watching the record's object (``rule_feeds``) are queued the same
        change in the same transaction: whatever captured it (a poll, a webhook, a
        request), a rule sees it once it is durable.
        """
        now = now or utcnow()
        items = list(items)
        for feed in self.rule_feeds.get((link, side), ()):
            self.enqueue(c, feed, "source", [(rid, "upsert", None) for rid, _, _ in items],
                         now=now)
        at = self.ts(now)
        rows = [
            {
                "link": link,
                "side": side,
                "record_id": rid,
                "op": op,
                "version": version,
                "status": "pending",
                "attempts": 0,
                "available_at": at,
                "created_at": at,
                "updated_at": at,
            }
            for rid, op, version in items
        ]
        if not rows:
            return 0
        self._executemany(c, self._enqueue_stmt, rows)
        return len(rows)

    @cached_property
    def _enqueue_stmt(self) -> Any:
        """Built and compiled once: the ON CONFLICT form is not in SQLAlchemy's
        statement cache, and compiling it per call cost more than running it
        (0.6 ms of each webhook delivery's commit)."""
        cols = ("link", "side", "record_id", "op", "version", "status", "attempts",
                "available_at", "created_at", "updated_at")
        ins = self._upsert(S.messages).values({k: sa.bindparam(k) for k in cols})
        return ins.on_conflict_do_update(
            index_elements=["link", "side", "record_id"],
            # A literal predicate: executemany cannot carry a bound one here.
            index_where=sa.text("status = 'pending'"),
            # The newest change wins; the waiting message keeps its attempts,
            # due time and age (attempts are not reset).
            set_={
                "op": ins.excluded.op,
                "version": ins.excluded.version,
                "updated_at": ins.excluded.updated_at,
            },
        )

    def claim(
        self,
        c: sa.Connection,
        link: str,
        limit: int,
        *,
        now: datetime | None = None,
        worker: str | None = None,
        lease_s: float = 60.0,
        retried_before: datetime | None = None,
    ) -> list[Message]:
        """Take up to ``limit`` due messages of a link, oldest first, one per record.

        The claim is a lease: ``worker`` owns the messages until ``lease_s``
        seconds from now; past that another worker may take them back. With
        ``retried_before``, a message that has failed before is taken only if it
        came due by then (a run does not retry what failed within it).
        """
        now = now or utcnow()
        m = S.messages
        r = m.alias("r")
        # Records with a message running are passed over (order per record), in
        # the form each database runs fast at 1,500 running messages (four
        # workers). PostgreSQL reads the link's running rows once into a hashed
        # NOT IN (2 ms; a correlated NOT EXISTS on a table without statistics yet
        # scanned them all per candidate, 0.4 s). SQLite planned every SQL form
        # at 150-700 ms without statistics, so the running rows are read through
        # their partial index and left out here, from a page over-read by as
        # many (at most one pending message per record).
        running: set[tuple[str, str]] = set()
        conds: list[Any] = [m.c.link == link, m.c.status == "pending", m.c.available_at <= now]
        if retried_before is not None:
            conds.append(sa.or_(m.c.attempts == 0, m.c.available_at <= retried_before))
        if self.dialect == "postgresql":
            conds.append(
                sa.tuple_(m.c.side, m.c.record_id).not_in(
                    sa.select(r.c.side, r.c.record_id).where(
                        r.c.status == "running", r.c.link == link
                    )
                )
            )
        else:
            running = {
                (str(x[0]), str(x[1]))
                for x in c.execute(
                    sa.select(r.c.side, r.c.record_id).where(
                        # a literal: SQLite uses a partial index only where the
                        # query states its condition as written
                        r.c.status == sa.literal_column("'running'"), r.c.link == link
                    )
                )
            }
        q = sa.select(m).where(*conds).order_by(m.c.id).limit(limit + len(running))
        if self.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True, of=m)
        rows = c.execute(q).all()
        if running:
            rows = [x for x in rows if (x.side, x.record_id) not in running][:limit]
        if not rows:
            return []
        ids = [r.id for r in rows]
        # Only rows still pending are taken: on SQLite two claimers may have
        # selected the same rows; the conditional update settles who won.
        won = set(
            c.execute(
                sa.update(m)
                .where(m.c.id.in_(ids), m.c.status == "pending")
                .values(
                    status="running",
                    updated_at=now,
                    claimed_by=worker,
                    lease_until=now + timedelta(seconds=lease_s),
                )
                .returning(m.c.id)
            ).scalars()
        )
        return [
            Message(r.id, r.link, r.side, r.record_id, r.op, r.version, r.attempts, now)
            for r in rows
            if r.id in won
        ]

    def recover_running(
        self,
        c: sa.Connection,
        link: str | None = None,
        *,
        now: datetime | None = None,
        owner_gone: Callable[[str | None], bool] | None = None,
    ) -> int:
        """Put messages whose worker is gone back in line.

        A running message is taken back when its lease has ended, or when
        ``owner_gone(claimed_by)`` says its worker no longer exists (a killed
        process on this machine). A pending message for the same record
        already supersedes it (apply reads current values): then it is dropped.
        """
        now = now or utcnow()
        m = S.messages
        q = sa.select(m.c.id, m.c.claimed_by, m.c.lease_until).where(m.c.status == "running")
        if link is not None:
            q = q.where(m.c.link == link)
        stale = [
            r.id
            for r in c.execute(q)
            if r.lease_until is None
            or r.lease_until < now
            or (owner_gone is not None and owner_gone(r.claimed_by))
        ]
        if not stale:
            return 0
        superseded = _pending_twin(m)
        n = 0
        for chunk in chunks(stale, 500):
            c.execute(sa.delete(m).where(m.c.id.in_(chunk), superseded.exists()))
            res = c.execute(
                sa.update(m)
                .where(m.c.id.in_(chunk), m.c.status == "running")
                .values(status="pending", claimed_by=None, lease_until=None)
            )
            n += res.rowcount or 0
        return n

    def finish_messages(
        self, c: sa.Connection, ids: Sequence[int], worker: str | None = None
    ) -> None:
        """Processed messages leave the queue (their outcome is in the log).

        With ``worker``, only messages still claimed by it: a worker whose
        lease ran out must not remove work another worker has taken over.
        """
        m = S.messages
        for chunk in chunks(ids, 500):
            cond = [m.c.id.in_(chunk)]
            if worker is not None:
                cond.append(m.c.claimed_by == worker)
            c.execute(sa.delete(m).where(*cond))

    def release_messages(
        self,
        c: sa.Connection,
        ids: Sequence[int],
        *,
        available_at: datetime,
        error: str | None,
        spend_attempt: bool,
        max_attempts: int,
    ) -> int:
        """Return messages to the queue after a failure; those out of attempts end ``failed``.

        Returns how many ended failed.
        """
        m = S.messages
        failed = 0
        for chunk in chunks(ids, 500):
            values: dict[str, Any] = {"available_at": available_at, "last_error": error}
            if spend_attempt:
                values["attempts"] = m.c.attempts + 1
                values["status"] = sa.case(
                    (m.c.attempts + 1 >= max_attempts, "failed"), else_="pending"
                )
                # A pending twin may exist (a newer change arrived meanwhile): then this
                # one is superseded and dropped instead of violating one-pending.
                twin = _pending_twin(m)
                c.execute(
                    sa.delete(m).where(
                        m.c.id.in_(chunk), m.c.attempts + 1 < max_attempts, twin.exists()
                    )
                )
                failed += c.execute(
                    sa.select(sa.func.count())
                    .select_from(m)
                    .where(m.c.id.in_(chunk), m.c.attempts + 1 >= max_attempts)
                ).scalar_one()
            else:
                values["status"] = "pending"
                twin = _pending_twin(m)
                c.execute(sa.delete(m).where(m.c.id.in_(chunk), twin.exists()))
            values["claimed_by"] = None
            values["lease_until"] = None
            c.execute(sa.update(m).where(m.c.id.in_(chunk)).values(**values))
        return failed

    def add_failed(
        self,
        c: sa.Connection,
        link: str,
        side: str,
        record_id: str,
        error: str,
        *,
        max_attempts: int,
        available_at: datetime,
    ) -> None:
        """Queue a record whose write failed outside the queue (during a migration)."""
        self.enqueue(c, link, side, [(record_id, "upsert", None)])
        c.execute(
            sa.update(S.messages)
            .where(
                S.messages.c.link == link,
                S.messages.c.side == side,
                S.messages.c.record_id == record_id,
                S.messages.c.status == "pending",
            )
            .values(
                attempts=1,
                last_error=error,
                available_at=available_at,
                status="failed" if max_attempts <= 1 else "pending",
            )
        )

    def pending_ids(self, c: sa.Connection, link: str, side: str) -> list[str]:
        m = S.messages
        return list(
            c.execute(
                sa.select(m.c.record_id).where(
                    m.c.link == link, m.c.side == side, m.c.status.in_(("pending", "running"))
                )
            ).scalars()
        )

    def queue_counts(self, c: sa.Connection, link: str | None = None) -> dict[str, int]:
        m = S.messages
        q = sa.select(m.c.status, sa.func.count()).group_by(m.c.status)
        if link:
            q = q.where(m.c.link == link)
        return {s: n for s, n in c.execute(q).all()}

    # -- views (status, API) ---------------------------------------------------
    def queue_counts_by_link(self, c: sa.Connection) -> dict[str, dict[str, int]]:
        m = S.messages
        out: dict[str, dict[str, int]] = {}
        q = sa.select(m.c.link, m.c.status, sa.func.count()).group_by(m.c.link, m.c.status)
        for link, status, n in c.execute(q):
            out.setdefault(link, {})[status] = n
        return out

    def waiting_unreachable(self, c: sa.Connection) -> dict[str, tuple[int, str]]:
        """Per link, pending messages put back because a system did not answer, and
        the newest reason: the link is paused until they get through (seen alike by
        every worker on any machine, since it is in the queue itself)."""
        m = S.messages
        q = (
            sa.select(m.c.link, sa.func.count(), sa.func.max(m.c.last_error))
            .where(m.c.status == "pending", m.c.last_error.startswith(UNREACHABLE))
            .group_by(m.c.link)
        )
        return {link: (int(n), str(why)) for link, n, why in c.execute(q)}

    def oldest_waiting(self, c: sa.Connection) -> dict[str, datetime]:
        """Per link, when its oldest message still waiting (pending or running) was queued."""
        m = S.messages
        q = (
            sa.select(m.c.link, sa.func.min(m.c.created_at))
            .where(m.c.status.in_(("pending", "running")))
            .group_by(m.c.link)
        )
        return {link: at for link, at in c.execute(q) if at is not None}

    def list_messages(
        self, *, status: str | None = None, link: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        m = S.messages
        q = sa.select(
            m.c.id, m.c.link, m.c.side, m.c.record_id, m.c.op, m.c.status, m.c.attempts,
            m.c.available_at, m.c.created_at, m.c.last_error,
        ).order_by(m.c.id).limit(limit)
        if status:
            q = q.where(m.c.status == status)
        if link:
            q = q.where(m.c.link == link)
        with self.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def retry_message(self, c: sa.Connection, message_id: int, *, now: datetime) -> str:
        """A failed message back to pending with fresh attempts.

        Returns ``"retried"``, ``"superseded"`` (a newer pending change of the
        record already covers it: the failed one is dropped), ``"missing"``, or
        the message's status when it is not failed.
        """
        m = S.messages
        row = c.execute(
            sa.select(m.c.link, m.c.side, m.c.record_id, m.c.status).where(m.c.id == message_id)
        ).first()
        if row is None:
            return "missing"
        if row.status != "failed":
            return str(row.status)
        twin = c.execute(
            sa.select(m.c.id).where(
                m.c.link == row.link, m.c.side == row.side, m.c.record_id == row.record_id,
                m.c.status == "pending",
            )
        ).first()
        if twin is not None:
            c.execute(sa.delete(m).where(m.c.id == message_id))
            return "superseded"
        c.execute(
            sa.update(m)
            .where(m.c.id == message_id, m.c.status == "failed")
            .values(status="pending", attempts=0, available_at=now, updated_at=now)
        )
        return "retried"

    def retry_failed_messages(
        self, c: sa.Connection, *, link: str | None = None, now: datetime
    ) -> int:
        """Every failed message (of ``link``) back to pending; a pending twin supersedes it."""
        m = S.messages
        cond = [m.c.status == "failed"]
        if link:
            cond.append(m.c.link == link)
        twin = _pending_twin(m)
        # Two failed messages of one record become one: the newest (apply reads
        # current values), or one-pending-per-record would be violated.
        p = m.alias("p")
        newer = sa.select(sa.literal(1)).where(
            p.c.link == m.c.link,
            p.c.side == m.c.side,
            p.c.record_id == m.c.record_id,
            p.c.status == "failed",
            p.c.id > m.c.id,
        )
        dropped = c.execute(sa.delete(m).where(*cond, newer.exists())).rowcount or 0
        dropped += c.execute(sa.delete(m).where(*cond, twin.exists())).rowcount or 0
        res = c.execute(
            sa.update(m)
            .where(*cond)
            .values(status="pending", attempts=0, available_at=now, updated_at=now)
        )
        return (res.rowcount or 0) + dropped

