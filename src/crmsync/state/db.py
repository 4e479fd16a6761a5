"""The state database itself: opening it, its schema version and upgrades, transactions.

``Database`` holds the engine and the dialect helpers every concept of the
store shares (``_upsert``, ``_executemany``, ``ts``); the concepts (queue,
pairs, log, admin, pushed records, erasure) are mixins over it, joined in
``store.StateStore``. All SQL in ``state/`` is SQLAlchemy Core over the tables
in ``schema.py``; no string is ever spliced into a statement. Each method that
takes a connection runs in the caller's transaction, so capture and apply
decide what commits together.
"""

from __future__ import annotations

import json
import operator
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from crmsync.errors import SettingError, StateError, StateUnavailable, refused_connect
from crmsync.state import schema as S

_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)

# Advisory lock key held while the state schema is created or upgraded (PostgreSQL).
_MIGRATE_LOCK = zlib.crc32(b"crmsync-state-migrate")


# _JSON's C encoder made once: ``encode`` makes a new one per call, a cost on
# the apply hot path (a shadow per record). No circular check: state values
# are plain trees.
_C_ENCODE = (
    c_make_encoder(None, _JSON.default, encode_basestring, None, ":", ",", False, False, True)
    if c_make_encoder is not None
    else None
)


def dumps(v: Any) -> str:
    """Compact JSON as the state stores it (non-ASCII kept, other types as text)."""
    if _C_ENCODE is None or type(v) is str:
        return _JSON.encode(v)
    return "".join(_C_ENCODE(v, 0))


def utcnow() -> datetime:
    # Naive UTC everywhere in the state database (portable across backends).
    return datetime.now(UTC).replace(tzinfo=None)


# SQLAlchemy's SQLite DateTime text form, so text comparisons stay ordered.
_TS = "%Y-%m-%d %H:%M:%S.%f"


def _has_schema(path: Path) -> bool:
    """The SQLite file exists and holds crmsync's schema (read only, nothing created)."""
    if not path.exists():
        return False
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=30)
        try:
            found = con.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'crmsync_meta'"
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return True  # let the real open report what is wrong with it
    return found is not None


def chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    """``seq`` in slices of ``n``: long ``IN`` lists stay within driver limits."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class Database:
    """One state database: its engine, schema upgrades and transactions."""

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.url = url
        self.readonly = readonly
        self.engine = self._open(url, readonly)
        self.dialect = self.engine.dialect.name
        self._writer = threading.RLock() if self.dialect == "sqlite" else None
        self._compiled: dict[int, Any] = {}
        # Shadow shapes: key list -> id, and id -> key list (both immutable once stored).
        self._shape_ids: dict[tuple[str, ...], int] = {}
        self._shape_keys: dict[int, tuple[str, ...]] = {}
        self._shape_clash: set[int] = set()  # ids whose checksum another key list took
        self._keep: list[Any] = []  # statements whose compiled form is cached

    # -- opening -----------------------------------------------------------
    def _open(self, url: str, readonly: bool) -> sa.Engine:
        from crmsync.config.urls import sql_url_problem

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
            if readonly and (not db or db == ":memory:" or not _has_schema(Path(db))):
                # A dry run against a state that does not exist yet (or that another
                # process is creating right now: its schema commits as a whole): an
                # empty private state, so nothing is created on disk.
                return self._empty_private()
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

    def _empty_private(self) -> sa.Engine:
        """An empty state of the current schema in memory (read-only use)."""
        eng = sa.create_engine("sqlite://", hide_parameters=True)
        self._install_pragmas(eng, wal=False)
        with eng.begin() as c:
            for step in S.MIGRATIONS:
                step(c)
            c.execute(sa.insert(S.meta).values(key="version", value=str(S.SCHEMA_VERSION)))
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
                cur.execute("PRAGMA synchronous=FULL")  # per transaction: see begin()
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    def migrate(self) -> int:
        """Bring the schema to the current version; returns the version."""
        if self.readonly:
            have = self.version()
            if have == 0 and self.dialect == "sqlite":
                # A file with no schema yet (empty, or another process creating it
                # this very moment): read as the empty state a missing file gives,
                # not as tables that are not there.
                self.engine.dispose()
                self.engine = self._empty_private()
                return S.SCHEMA_VERSION
            return have
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
    def begin(self, *, durable: bool = True) -> Iterator[sa.Connection]:
        """A write transaction.

        ``durable=False`` is for the engine's own steps that a crash makes it
        repeat anyway — claiming a batch, recording an applied batch, queueing a
        captured page: such a commit is not flushed to disk before it returns.
        A killed process loses nothing either way (the commit is in the
        database's log); only a power cut or OS crash may undo the last few,
        and then the messages are still queued, the cursor still behind, and
        the batch runs again (apply is idempotent; creates are found again by
        their match keys). Everything acknowledged to someone outside — a
        webhook's 202, an API or CLI request, an erasure, an admin action —
        stays durable: flushed (WAL fsync on SQLite, synchronous_commit on
        PostgreSQL) before the commit returns.
        """
        if self._writer is None:
            with self.engine.begin() as c:
                if not durable:
                    c.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                yield c
            return
        # SQLite has one writer at a time; threads of this process queue on a
        # lock (handed over at once) instead of SQLite's busy handler, which
        # sleeps up to 100 ms between tries and made the latency tail.
        with self._writer, self.engine.begin() as c:
            # Per transaction, before it writes (pysqlite begins at the first
            # write, and the level cannot change inside a transaction). In WAL
            # mode a FULL commit syncs the log with every NORMAL commit before it.
            level = "FULL" if durable else "NORMAL"
            info = c.connection.info
            if info.get("synchronous") != level:
                c.exec_driver_sql(f"PRAGMA synchronous={level}")
                info["synchronous"] = level
            yield c

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as c:
            yield c

    def close(self) -> None:
        self.engine.dispose()

    def _compile_once(self, stmt: Any) -> Any:
        """A fixed statement's compiled form, made once per store (kept alive with
        the statement, so its id is never reused)."""
        compiled = self._compiled.get(id(stmt))
        if compiled is None:
            compiled = self._compiled[id(stmt)] = stmt.compile(dialect=self.engine.dialect)
            self._keep.append(stmt)
        return compiled

    def _executemany(self, c: sa.Connection, stmt: Any, rows: list[dict[str, Any]]) -> None:
        """Run a fixed statement for many rows at driver level.

        SQLAlchemy's per-row parameter processing costs more than SQLite's own
        insert on the migration's hot path; the statement is still built with
        Core and compiled once, only the rows skip the per-row machinery.
        """
        compiled = self._compile_once(stmt)
        if compiled.positiontup is not None:  # SQLite (qmark): values as stored text
            pick = operator.itemgetter(*compiled.positiontup)
            params: list[Any] = list(map(pick, rows))
        else:  # psycopg binds Python values natively
            params = rows
        c.exec_driver_sql(compiled.string, params)

    def _insert_returning_id(self, c: sa.Connection, stmt: Any, row: dict[str, Any]) -> int:
        """Insert one row of a fixed ``INSERT ... RETURNING id`` at driver level
        (values as ``_executemany`` binds them) and return its id."""
        compiled = self._compile_once(stmt)
        params: Any = row
        if compiled.positiontup is not None:
            params = tuple(row[k] for k in compiled.positiontup)
        return int(c.exec_driver_sql(compiled.string, params).scalar_one())

    def in_keys(self, col: Any, keys: Sequence[Any]) -> Any:
        """``col`` is one of ``keys``, bound as ONE parameter (SQLite ``json_each``,
        PostgreSQL ``= ANY``): the statement stays the same whatever the number of
        keys, instead of an ``IN`` list expanded to one parameter per key."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects import postgresql  # only with a PostgreSQL state

            item = sa.BigInteger() if keys and isinstance(keys[0], int) else sa.Text()
            return col == sa.any_(sa.literal(list(keys), type_=postgresql.ARRAY(item)))
        each = sa.func.json_each(dumps(list(keys))).table_valued("value")
        return col.in_(sa.select(each.c.value))

    # -- shadows -------------------------------------------------------------
    def encode_shadows(self, c: sa.Connection, shadows: Sequence[dict[str, Any]]) -> list[str]:
        """Shadows as stored: ``[shape id, value, ...]`` (JSON), the keys once in
        ``crmsync_shapes`` (written in the caller's transaction, with the rows)."""
        used: dict[int, tuple[str, ...]] = {}
        out: list[str] = []
        for sh in shadows:
            keys = tuple(sh)
            sid = self._shape_ids.get(keys)
            if sid is None:
                sid = self._shape_ids[keys] = zlib.crc32(dumps(keys).encode())
            if not keys or sid in self._shape_clash:
                out.append(dumps(sh))
                continue
            used[sid] = keys
            out.append(dumps([sid, *sh.values()]))
        if used:
            fresh = [sid for sid in used if sid not in self._shape_keys]
            ins = self._upsert(S.shapes).on_conflict_do_nothing(index_elements=["id"])
            c.execute(ins, [{"id": sid, "names": dumps(k)} for sid, k in used.items()])
            clash = {sid for sid in fresh if self.shape_keys(c, sid) != used[sid]}
            if clash:  # a checksum taken by another key list: those keep their keys
                self._shape_clash |= clash
                for sid in clash:
                    self._shape_keys.pop(sid, None)
                return self.encode_shadows(c, shadows)
        return out

    def shape_keys(self, c: sa.Connection, sid: int) -> tuple[str, ...]:
        keys = self._shape_keys.get(sid)
        if keys is None:
            got = c.execute(sa.select(S.shapes.c.names).where(S.shapes.c.id == sid)).scalar()
            if got is None:
                raise StateError(f"state database: shadow shape {sid} is missing")
            keys = self._shape_keys[sid] = tuple(json.loads(got))
        return keys

    def decode_shadow(self, c: sa.Connection, text: str) -> dict[str, Any]:
        """A stored shadow as a dict (a plain JSON object as stored before v6)."""
        v = json.loads(text)
        if isinstance(v, list):
            return dict(zip(self.shape_keys(c, v[0]), v[1:], strict=True))
        return dict(v)

    def ts(self, when: datetime) -> Any:
        """A timestamp as a driver-level insert binds it (formatted once per batch)."""
        return when.strftime(_TS) if self.dialect == "sqlite" else when

    def _upsert(self, table: sa.Table) -> Any:
        """An INSERT that takes ON CONFLICT clauses (SQLite and PostgreSQL)."""
        # Each dialect imported when used: a SQLite state never loads PostgreSQL's
        # (~17 ms of every CLI start).
        if self.dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(table)
        if self.dialect == "sqlite":
            from sqlalchemy.dialects import sqlite

            return sqlite.insert(table)
        raise StateError(
            f"state database {self.dialect!r} is not supported (use SQLite or PostgreSQL)"
        )

    def ping(self) -> int:
        """The schema version; raises when the database cannot be reached."""
        with self.connect() as c:
            return self._version(c)

