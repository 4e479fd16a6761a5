"""The state database: cursors, the queue, identities with shadows, runs and outcomes.

All SQL here is SQLAlchemy Core over the tables in ``schema.py``; no string
is ever spliced into a statement. Each public method takes the connection of
the caller's transaction, so capture and apply decide what commits together.
"""

from __future__ import annotations

import hashlib
import json
import operator
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from crmsync.errors import SettingError, StateError, StateUnavailable, refused_connect
from crmsync.model import REQUEST_ACTIONS
from crmsync.state import schema as S

_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)



# Advisory lock key held while the state schema is created or upgraded (PostgreSQL).
_MIGRATE_LOCK = zlib.crc32(b"crmsync-state-migrate")


def dumps(v: Any) -> str:
    return _JSON.encode(v)


def utcnow() -> datetime:
    # Naive UTC everywhere in the state database (portable across backends).
    return datetime.now(UTC).replace(tzinfo=None)


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


class StateStore:
    """Access to one state database."""

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.url = url
        self.readonly = readonly
        self.engine = self._open(url, readonly)
        self.dialect = self.engine.dialect.name
        self._writer = threading.RLock() if self.dialect == "sqlite" else None
        self._compiled: dict[int, Any] = {}
        self._keep: list[Any] = []  # statements whose compiled form is cached
        self._identity_upsert = self._build_identity_upsert()
        self._outcome_insert = sa.insert(S.outcomes).values(
            {k: sa.bindparam(k) for k in OUTCOME_COLUMNS}
        )

    # -- opening -----------------------------------------------------------
    def _open(self, url: str, readonly: bool) -> sa.Engine:
        from crmsync.config.loader import sql_url_problem

        if (why := sql_url_problem(url)) is not None:
            raise SettingError("state", f"state database: {why}")
        u = sa.engine.make_url(url)
        if u.get_backend_name() == "sqlite":
            db = u.database or ""
            if db and db != ":memory:" and not db.startswith("file:"):
                folder = Path(db).resolve().parent
                if not folder.is_dir():
                    raise SettingError(
                        "state",
                        f"state database: the folder {str(folder)!r} does not exist "
                        "(crmsync creates the file, not its folder)",
                    )
            if readonly and (not db or db == ":memory:" or not Path(db).exists()):
                # A dry run against a state that does not exist yet: an empty
                # private state, so nothing is created on disk.
                eng = sa.create_engine("sqlite://", hide_parameters=True)
                self._install_pragmas(eng, wal=False)
                with eng.begin() as c:
                    for step in S.MIGRATIONS:
                        step(c)
                    c.execute(sa.insert(S.meta).values(key="version", value=str(S.SCHEMA_VERSION)))
                return eng
            if readonly:
                eng = sa.create_engine(
                    f"sqlite:///file:{Path(db).resolve()}?mode=ro&uri=true",
                    hide_parameters=True,
                )
                self._install_pragmas(eng, wal=False)
                sa.event.listen(eng, "handle_error", self._connect_error)
                return eng
            eng = sa.create_engine(url, hide_parameters=True)
            self._install_pragmas(eng, wal=True)
            sa.event.listen(eng, "handle_error", self._connect_error)
            return eng
        eng = sa.create_engine(url, hide_parameters=True, pool_pre_ping=True)
        sa.event.listen(eng, "handle_error", self._connect_error)
        return eng

    @staticmethod
    def _connect_error(ctx: sa.engine.ExceptionContext) -> None:
        """A state database that refuses us or cannot be reached, in words: a config
        problem naming `state:`, or an outage."""
        from crmsync.config.secrets import redact  # lazy: config imports this module

        exc = ctx.sqlalchemy_exception
        if not isinstance(exc, sa.exc.DBAPIError):
            return
        text = str(exc.orig).strip().splitlines()
        detail = redact(text[0] if text else type(exc.orig).__name__)
        why = refused_connect(ctx.dialect.name, exc.orig)
        if why is not None:
            raise SettingError("state", f"state database: {why} ({detail})") from None
        if ctx.connection is not None or ctx.is_pre_ping or ctx.dialect.name == "sqlite":
            return  # a statement's error, or the pool probing: handled elsewhere
        if isinstance(exc, sa.exc.OperationalError):
            raise StateUnavailable(f"the state database cannot be reached: {detail}") from None

    @staticmethod
    def _install_pragmas(eng: sa.Engine, *, wal: bool) -> None:
        @sa.event.listens_for(eng, "connect")
        def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
            cur = dbapi_conn.cursor()
            if wal:
                # WAL lets readers (the API, `log`) run beside a writer; FULL
                # syncs each commit so a committed message survives a crash.
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    def migrate(self) -> int:
        """Bring the schema to the current version; returns the version."""
        if self.readonly:
            return self.version()
        if self.version() == S.SCHEMA_VERSION:
            return S.SCHEMA_VERSION  # the common case: no write lock taken
        with self.engine.begin() as c:
            # Two processes starting on a new state database (serve and a worker,
            # parallel CLI calls) must not both create the schema: the first takes
            # the write lock, the second waits and then finds the version current.
            if self.dialect == "sqlite":
                # pysqlite runs DDL outside a transaction unless one is begun by hand.
                c.exec_driver_sql("BEGIN IMMEDIATE")
            elif self.dialect == "postgresql":
                c.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATE_LOCK)))
            have = self._version(c)
            if have > S.SCHEMA_VERSION:
                raise StateError(
                    f"the state database is at schema version {have}, newer than this "
                    f"crmsync ({S.SCHEMA_VERSION}): upgrade crmsync"
                )
            for n in range(have, S.SCHEMA_VERSION):
                S.MIGRATIONS[n](c)
            if have == 0:
                c.execute(sa.insert(S.meta).values(key="version", value=str(S.SCHEMA_VERSION)))
            elif have < S.SCHEMA_VERSION:
                c.execute(
                    sa.update(S.meta)
                    .where(S.meta.c.key == "version")
                    .values(value=str(S.SCHEMA_VERSION))
                )
        return S.SCHEMA_VERSION

    def version(self) -> int:
        with self.engine.connect() as c:
            return self._version(c)

    @staticmethod
    def _version(c: sa.Connection) -> int:
        if not sa.inspect(c).has_table(S.meta.name):
            return 0
        v = c.execute(sa.select(S.meta.c.value).where(S.meta.c.key == "version")).scalar()
        return int(v) if v is not None else 0

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        if self._writer is None:
            with self.engine.begin() as c:
                yield c
            return
        # SQLite has one writer at a time; threads of this process queue on a
        # lock (handed over at once) instead of SQLite's busy handler, which
        # sleeps up to 100 ms between tries and made the latency tail.
        with self._writer, self.engine.begin() as c:
            yield c

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as c:
            yield c

    def close(self) -> None:
        self.engine.dispose()

    def _executemany(self, c: sa.Connection, stmt: Any, rows: list[dict[str, Any]]) -> None:
        """Run a fixed statement for many rows at driver level.

        SQLAlchemy's per-row parameter processing costs more than SQLite's own
        insert on the migration's hot path; the statement is still built with
        Core and compiled once, only the rows skip the per-row machinery.
        """
        key = id(stmt)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = stmt.compile(dialect=self.engine.dialect)
            self._compiled[key] = compiled
            self._keep.append(stmt)
        if compiled.positiontup is not None:  # SQLite (qmark): values as stored text
            pick = operator.itemgetter(*compiled.positiontup)
            params: list[Any] = [pick(r) for r in rows]
        else:  # psycopg binds Python values natively
            params = rows
        c.exec_driver_sql(compiled.string, params)

    def ts(self, when: datetime) -> Any:
        """A timestamp as a driver-level insert binds it (formatted once per batch)."""
        return when.strftime(_TS) if self.dialect == "sqlite" else when

    def upsert(self, table: sa.Table) -> Any:
        """An INSERT that takes ON CONFLICT clauses (SQLite and PostgreSQL)."""
        return self._upsert(table)

    def _upsert(self, table: sa.Table) -> Any:
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        if self.dialect == "sqlite":
            return sqlite.insert(table)
        raise StateError(
            f"state database {self.dialect!r} is not supported (use SQLite or PostgreSQL)"
        )

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

    def clear_cursors(self, c: sa.Connection, link: str) -> None:
        c.execute(sa.delete(S.cursors).where(S.cursors.c.link == link))

    # -- queue -------------------------------------------------------------
    def enqueue(
        self,
        c: sa.Connection,
        link: str,
        side: str,
        items: Iterable[tuple[str, str, str | None]],
        *,
        now: datetime | None = None,
    ) -> int:
        """Queue ``(record_id, op, version)`` changes; a waiting one per record collapses."""
        now = now or utcnow()
        rows = [
            {
                "link": link,
                "side": side,
                "record_id": rid,
                "op": op,
                "version": version,
                "status": "pending",
                "attempts": 0,
                "available_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for rid, op, version in items
        ]
        if not rows:
            return 0
        ins = self._upsert(S.messages)
        stmt = ins.on_conflict_do_update(
            index_elements=["link", "side", "record_id"],
            # A literal predicate: executemany cannot carry a bound one here.
            index_where=sa.text("status = 'pending'"),
            # The newest change wins; attempts restart because it is new work.
            set_={
                "op": ins.excluded.op,
                "version": ins.excluded.version,
                "updated_at": ins.excluded.updated_at,
            },
        )
        c.execute(stmt, rows)
        return len(rows)

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
        running = (
            sa.select(sa.literal(1))
            .select_from(m.alias("r"))
            .where(
                sa.literal_column("r.link") == m.c.link,
                sa.literal_column("r.side") == m.c.side,
                sa.literal_column("r.record_id") == m.c.record_id,
                sa.literal_column("r.status") == "running",
            )
        )
        q = (
            sa.select(m)
            .where(
                m.c.link == link,
                m.c.status == "pending",
                m.c.available_at <= now,
                ~running.exists(),
                *(
                    ()
                    if retried_before is None
                    else (sa.or_(m.c.attempts == 0, m.c.available_at <= retried_before),)
                ),
            )
            .order_by(m.c.id)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True, of=m)
        rows = c.execute(q).all()
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
        for chunk in _chunks(stale, 500):
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
        for chunk in _chunks(ids, 500):
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
        for chunk in _chunks(ids, 500):
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

    def next_due(self, c: sa.Connection, link: str) -> datetime | None:
        m = S.messages
        return c.execute(
            sa.select(sa.func.min(m.c.available_at)).where(
                m.c.link == link, m.c.status == "pending"
            )
        ).scalar()

    # -- identities and shadows -------------------------------------------
    def live_ids(self, c: sa.Connection, link: str, side: str) -> list[str]:
        """Ids on one side of every pair not yet known as deleted (for hard-delete checks)."""
        i = S.identities
        col = i.c.source_id if side == "source" else i.c.target_id
        q = sa.select(col).where(i.c.link == link, i.c.deleted.is_(False), col.is_not(None))
        return [str(r[0]) for r in c.execute(q)]

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
        for chunk in _chunks(list(ids), 500):
            for r in c.execute(
                sa.select(
                    t.c.source_id,
                    t.c.target_id,
                    t.c.shadow,
                    t.c.source_version,
                    t.c.target_version,
                    t.c.deleted,
                ).where(t.c.link == link, col.in_(chunk))
            ):
                ident = Identity(r[0], r[1], json.loads(r[2]), r[3], r[4], bool(r[5]))
                out[ident.source_id if key == "source" else ident.target_id or ""] = ident
        return out

    def save_identities(self, c: sa.Connection, link: str, rows: Sequence[dict[str, Any]]) -> None:
        """Upsert identity rows (source_id, target_id, shadow dict, versions, deleted)."""
        if not rows:
            return
        now = self.ts(utcnow())
        payload = [
            {
                "link": link,
                "source_id": r["source_id"],
                "target_id": r["target_id"],
                "shadow": r["shadow"] if isinstance(r["shadow"], str) else dumps(r["shadow"]),
                "source_version": r.get("source_version"),
                "target_version": r.get("target_version"),
                "deleted": bool(r.get("deleted", False)),
                "updated_at": now,
            }
            for r in rows
        ]
        self._executemany(c, self._identity_upsert, payload)

    def _build_identity_upsert(self) -> Any:
        if self.dialect not in ("sqlite", "postgresql"):
            return None
        ins = self._upsert(S.identities).values(
            {k: sa.bindparam(k) for k in IDENTITY_COLUMNS}
        )
        return ins.on_conflict_do_update(
            index_elements=["link", "source_id"],
            set_={k: getattr(ins.excluded, k) for k in IDENTITY_COLUMNS[2:]},
        )

    # -- trigger memory ---------------------------------------------------------
    def trigger_seen(
        self, c: sa.Connection, link: str, ids: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        t = S.trigger_seen
        out: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(list(ids), 500):
            for sid, seen in c.execute(
                sa.select(t.c.source_id, t.c.seen).where(t.c.link == link, t.c.source_id.in_(chunk))
            ):
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

    def scrub_identities(self, c: sa.Connection, link: str) -> None:
        c.execute(sa.delete(S.identities).where(S.identities.c.link == link))

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
            self._executemany(c, self._outcome_insert, list(rows))

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

    def logged_in_run(self, run_id: int, refs: Sequence[str]) -> set[str]:
        """Which of the source refs already have an outcome logged by run ``run_id``."""
        o = S.outcomes
        found: set[str] = set()
        with self.connect() as c:
            for chunk in _chunks(list(refs), 500):
                q = sa.select(o.c.source_ref).where(
                    o.c.run_id == run_id, o.c.source_ref.in_(chunk)
                )
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

    # == service API and admin CLI (api/, cli_admin.py) ======================
    # Reads and small admin writes for the HTTP API, `crmsync status|retry|token`.
    # Writers take the caller's connection so the audit row commits with the change.

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

    # -- queue views ----------------------------------------------------------
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

    def outcome_counts(self, c: sa.Connection) -> dict[tuple[str, str], int]:
        o = S.outcomes
        q = sa.select(o.c.link, o.c.status, sa.func.count()).group_by(o.c.link, o.c.status)
        return {(link, status): n for link, status, n in c.execute(q)}

    def ping(self) -> int:
        """The schema version; raises when the database cannot be reached."""
        with self.connect() as c:
            return self._version(c)

    # == webhooks and push-only systems (api/hooks.py, connectors/webhook.py) ==
    # Replay ledger and the records push-only systems send. Writers take the
    # caller's connection: a delivery's replay row, its pushed records and its
    # queued messages commit together or not at all. Statements are built once
    # (``_wh``): building Core statements per call cost more than running them.

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
            for chunk in _chunks(list(dict.fromkeys(ids)), 500):
                params = {"system": system, "object": obj, "ids": list(chunk)}
                out += c.execute(self._wh["read"], params)
        return out

    def pushed_count(self, system: str, obj: str) -> int:
        with self.connect() as c:
            return int(c.execute(self._wh["count"], {"system": system, "object": obj}).scalar_one())

    # == GDPR erasure (engine/graph.py, engine/erase.py, the apply hook) =====
    # Refs are "system.object:id" text, as in the outcomes table. Ids are not
    # personal values; everything else about an erased record is scrubbed.

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
            for chunk in _chunks(list(dict.fromkeys(ids)), 500):
                q = sa.select(t.c.source_id, t.c.target_id).where(
                    t.c.link == link, col.in_(chunk), t.c.target_id.is_not(None)
                )
                out += [(r[0], r[1]) for r in c.execute(q)]
        return list(dict.fromkeys(out))

    def _erased_table_missing(self, c: sa.Connection) -> bool:
        # A dry run may read a state not yet upgraded to v5 (read-only: no migration).
        if not self.readonly:
            return False
        missing: bool | None = getattr(self, "_no_erased_table", None)
        if missing is None:
            missing = self._no_erased_table = not sa.inspect(c).has_table(S.erased.name)
        return missing

    def erased_refs(self, c: sa.Connection, refs: Iterable[str]) -> set[str]:
        """Which of ``refs`` were erased (one query per 500 refs)."""
        if self._erased_table_missing(c):
            return set()
        e = S.erased
        found: set[str] = set()
        for chunk in _chunks(list(dict.fromkeys(refs)), 500):
            found.update(c.execute(sa.select(e.c.record_ref).where(e.c.record_ref.in_(chunk)))
                         .scalars())
        return found

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
        for chunk in _chunks(list(dict.fromkeys(refs)), 250):
            rows = c.execute(
                sa.select(o.c.id, o.c.fields).where(
                    sa.or_(o.c.source_ref.in_(chunk), o.c.target_ref.in_(chunk)),
                    o.c.action != "erased",  # the erasure's own entries hold no values
                )
            ).all()
            for oid, stored in rows:
                try:
                    names = [f.get("field") for f in expand_fields(json.loads(stored or "[]"))]
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
        for chunk in _chunks(list(dict.fromkeys(refs)), 500):
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
        for chunk in _chunks(list(dict.fromkeys(ids)), 500):
            res = c.execute(
                sa.delete(m).where(m.c.link == link, m.c.side == side, m.c.record_id.in_(chunk))
            )
            n += res.rowcount or 0
        return n

    def delete_trigger_seen(self, c: sa.Connection, link: str, ids: Sequence[str]) -> int:
        t = S.trigger_seen
        n = 0
        for chunk in _chunks(list(dict.fromkeys(ids)), 500):
            res = c.execute(sa.delete(t).where(t.c.link == link, t.c.source_id.in_(chunk)))
            n += res.rowcount or 0
        return n

    def add_activities(self, c: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            c.execute(sa.insert(S.activities), list(rows))

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

    @staticmethod
    def _mentioning(refs: Sequence[str]) -> Any:
        """Entries whose ``mentions`` name one of ``refs``."""
        m = S.activities.c.mentions
        return sa.or_(*[m.contains(f" {r} ", autoescape=True) for r in refs])

    def _activity_refs(self, refs: Sequence[str]) -> Any:
        return sa.or_(S.activities.c.record_ref.in_(list(refs)), self._mentioning(refs))

    def activities_mentioning(
        self, c: sa.Connection, refs: Sequence[str]
    ) -> set[tuple[str, str]]:
        """``(link, record_ref)`` of entries naming ``refs`` as a related record."""
        a = S.activities
        out: set[tuple[str, str]] = set()
        for chunk in _chunks(list(dict.fromkeys(refs)), 100):
            q = sa.select(a.c.link, a.c.record_ref).where(self._mentioning(chunk))
            out.update((str(x[0]), str(x[1])) for x in c.execute(q))
        return out

    def delivered_activities_of(self, c: sa.Connection, refs: Sequence[str]) -> list[
        tuple[str, str]
    ]:
        """``(record_ref, external id)`` of entries about ``refs`` written into a system."""
        a = S.activities
        q = sa.select(a.c.record_ref, a.c.external_id).where(
            a.c.external_id.is_not(None), self._activity_refs(refs)
        )
        return [(str(r[0]), str(r[1])) for r in c.execute(q)]

    def activities(self, record: str, limit: int = 100) -> list[dict[str, Any]]:
        """A record's timeline, newest first: entries on it and entries naming it
        (the target's entries name their source and related records)."""
        a = S.activities
        q = sa.select(a).where(self._activity_refs([record])).order_by(a.c.id.desc()).limit(limit)
        with self.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def erase_activity_text(self, c: sa.Connection, refs: Sequence[str], marker: str) -> int:
        a = S.activities
        n = 0
        for chunk in _chunks(list(dict.fromkeys(refs)), 100):
            res = c.execute(
                sa.update(a)
                .where(self._activity_refs(chunk), a.c.kind != "erased")
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

    def run_logged_refs(self, c: sa.Connection, run_id: int, refs: Sequence[str]) -> set[str]:
        """Which of the source refs already have an outcome logged by run ``run_id``
        (``logged_in_run`` on the caller's connection: apply reads all in one)."""
        o = S.outcomes
        found: set[str] = set()
        for chunk in _chunks(list(refs), 500):
            q = sa.select(o.c.source_ref).where(o.c.run_id == run_id, o.c.source_ref.in_(chunk))
            found.update(r[0] for r in c.execute(q))
        return found

IDENTITY_COLUMNS = (
    "link", "source_id", "target_id", "shadow", "source_version", "target_version",
    "deleted", "updated_at",
)
PUSHED_COLUMNS = ("system", "object", "record_id", "fields", "deleted", "seq", "updated_at")
OUTCOME_COLUMNS = (
    "run_id", "link", "source_ref", "target_ref", "action", "status", "fields", "message", "at",
)
# The error a message is put back with when its system does not answer (no
# attempt spent): such messages mark their link as paused.
UNREACHABLE = "system unreachable"
# SQLAlchemy's SQLite DateTime text form, so text comparisons stay ordered.
_TS = "%Y-%m-%d %H:%M:%S.%f"


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


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def backoff_at(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)
