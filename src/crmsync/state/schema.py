"""The engine's own tables (SQLAlchemy Core), versioned.

Every change to these tables is a new numbered step in ``MIGRATIONS``; the
database records the step it is at in ``crmsync_meta``. Steps are plain
functions over a connection so they run the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData()

meta = sa.Table(
    "crmsync_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# Capture positions per link and side: ``incremental`` (the connector's
# cursor) and ``migration`` (the last key of an initial/full scan).
cursors = sa.Table(
    "crmsync_cursors",
    metadata,
    sa.Column("link", sa.String(128), primary_key=True),
    sa.Column("side", sa.String(16), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("value", sa.Text, nullable=True),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

# The durable queue. A message names a changed record; apply reads the record's
# current values, so newer changes to a waiting record collapse into one
# pending row (partial unique index) and order per record is kept.
messages = sa.Table(
    "crmsync_messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("link", sa.String(128), nullable=False),
    sa.Column("side", sa.String(16), nullable=False),
    sa.Column("record_id", sa.String(255), nullable=False),
    sa.Column("op", sa.String(16), nullable=False),
    sa.Column("version", sa.Text, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("available_at", sa.DateTime, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("last_error", sa.Text, nullable=True),
    # v2: a running message belongs to one worker until its lease ends; a
    # worker killed mid-batch leaves it for others once the lease is over.
    sa.Column("claimed_by", sa.String(64), nullable=True),
    sa.Column("lease_until", sa.DateTime, nullable=True),
)
# Partial indexes: the condition in SQLite's form here; ``for_dialect`` adds
# PostgreSQL's when the state is PostgreSQL. Naming postgresql_where here would
# import that dialect (~17 ms) at every start of a SQLite-state CLI.
_PARTIAL: list[tuple[sa.Index, sa.ColumnElement[bool]]] = []


def _partial(
    name: str, *cols: sa.Column[Any], where: sa.ColumnElement[bool], **kw: Any
) -> sa.Index:
    ix = sa.Index(name, *cols, sqlite_where=where, **kw)
    _PARTIAL.append((ix, where))
    return ix


def for_dialect(name: str) -> None:
    """Give the partial indexes their condition in dialect ``name``'s form (before any
    DDL of them is made for that dialect; idempotent)."""
    if name == "postgresql":
        for ix, where in _PARTIAL:
            ix.dialect_kwargs["postgresql_where"] = where


_partial(
    "crmsync_messages_one_pending",
    messages.c.link,
    messages.c.side,
    messages.c.record_id,
    unique=True,
    where=messages.c.status == "pending",
)
sa.Index("crmsync_messages_claim", messages.c.status, messages.c.link, messages.c.id)
# v7: a claim passes over records with a message running (order per record): it reads
# them through this index instead of the whole table.
_partial(
    "crmsync_messages_running",
    messages.c.link,
    messages.c.side,
    messages.c.record_id,
    where=messages.c.status == "running",
)

# Identity map plus shadow: which source record is which target record, and
# the values both sides had at the last successful sync (JSON, target form).
identities = sa.Table(
    "crmsync_identities",
    metadata,
    sa.Column("link", sa.String(128), primary_key=True),
    sa.Column("source_id", sa.String(255), primary_key=True),
    sa.Column("target_id", sa.String(255), nullable=True),
    sa.Column("shadow", sa.Text, nullable=False),
    sa.Column("source_version", sa.Text, nullable=True),
    sa.Column("target_version", sa.Text, nullable=True),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    # v6: the values a crmsync create wrote, for its log entry (which does not
    # copy them): '' while they are still the shadow; the shadow is copied here
    # when it first changes. NULL: the pair's log holds its own values.
    sa.Column("first_shadow", sa.Text, nullable=True),
    # v6: the outcome row of the page of creates this pair was created in (its
    # create is logged there, see outcomes.records).
    sa.Column("created_in", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=True),
    # v6, SQLite: the primary key is the row (no rowid b-tree beside the key's index).
    sqlite_with_rowid=False,
)
sa.Index("crmsync_identities_target", identities.c.link, identities.c.target_id, unique=True)

runs = sa.Table(
    "crmsync_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("link", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime, nullable=True),
    sa.Column("counts", sa.Text, nullable=False, default="{}"),
    sa.Column("error", sa.Text, nullable=True),
)

# One row per record that something happened to (writes, conflicts,
# rejections, failures); quiet "unchanged" passes are only counted on the run.
outcomes = sa.Table(
    "crmsync_outcomes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, nullable=True),
    sa.Column("link", sa.String(128), nullable=False),
    sa.Column("source_ref", sa.String(512), nullable=True),
    sa.Column("target_ref", sa.String(512), nullable=True),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("fields", sa.Text, nullable=False, default="[]"),
    sa.Column("message", sa.Text, nullable=True),
    sa.Column("at", sa.DateTime, nullable=False),
    # v6: a page of plain creates (a batch's new pairs, every value written): one
    # row for ``records`` records, source_ref/target_ref the two ref prefixes,
    # fields {"page": [[source id, target id], ...]}; NULL on a row of one record.
    sa.Column("records", sa.Integer, nullable=True),
)
sa.Index("crmsync_outcomes_source", outcomes.c.source_ref)
sa.Index("crmsync_outcomes_target", outcomes.c.target_ref)
sa.Index("crmsync_outcomes_link_status", outcomes.c.link, outcomes.c.status)


# -- v2: the service -----------------------------------------------------------

# API tokens: only a hash is kept; the token itself is shown once.
tokens = sa.Table(
    "crmsync_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("token_hash", sa.String(128), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("revoked_at", sa.DateTime, nullable=True),
)

# Who changed configuration or state through the API or CLI, and when.
audit = sa.Table(
    "crmsync_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(512), nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
)

# Webhook ids already accepted per system: a replayed delivery is refused.
webhook_deliveries = sa.Table(
    "crmsync_webhook_deliveries",
    metadata,
    sa.Column("system", sa.String(128), primary_key=True),
    sa.Column("webhook_id", sa.String(255), primary_key=True),
    sa.Column("received_at", sa.DateTime, nullable=False),
)

# Records of push-only systems: whatever the system last pushed.
pushed_records = sa.Table(
    "crmsync_pushed_records",
    metadata,
    sa.Column("system", sa.String(128), primary_key=True),
    sa.Column("object", sa.String(128), primary_key=True),
    sa.Column("record_id", sa.String(255), primary_key=True),
    sa.Column("fields", sa.Text, nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    # a per-system sequence: the capture cursor of a push-only system
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)
sa.Index(
    "crmsync_pushed_records_seq", pushed_records.c.system, pushed_records.c.object,
    pushed_records.c.seq,
)

# Runtime state of a link: the enable/disable switch and its schedule.
link_state = sa.Table(
    "crmsync_link_state",
    metadata,
    sa.Column("link", sa.String(128), primary_key=True),
    sa.Column("enabled", sa.Boolean, nullable=True),
    sa.Column("changed_by", sa.String(128), nullable=True),
    sa.Column("changed_at", sa.DateTime, nullable=True),
    sa.Column("next_run_at", sa.DateTime, nullable=True),
    sa.Column("last_run_at", sa.DateTime, nullable=True),
)

# -- v3: quotas ------------------------------------------------------------------

# Calls spent per system in its current quota window (shared by all workers).
quota_use = sa.Table(
    "crmsync_quota_use",
    metadata,
    sa.Column("system", sa.String(128), primary_key=True),
    sa.Column("window_start", sa.DateTime, nullable=False),
    sa.Column("calls", sa.Integer, nullable=False),
)

# -- v4: event triggers ------------------------------------------------------------

# Per link and source record, the trigger fields' values as last seen (JSON).
trigger_seen = sa.Table(
    "crmsync_trigger_seen",
    metadata,
    sa.Column("link", sa.String(128), primary_key=True),
    sa.Column("source_id", sa.String(255), primary_key=True),
    sa.Column("seen", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sqlite_with_rowid=False,  # v6
)

# -- v5: timelines and erasure -----------------------------------------------------

# A record's timeline: what each sync did to it, kept by crmsync and, where the
# target supports it, written into the target too (delivered_at set once it is).
activities = sa.Table(
    "crmsync_activities",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("link", sa.String(128), nullable=False),
    sa.Column("record_ref", sa.String(400), nullable=False),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("deliver", sa.Boolean, nullable=False, default=False),
    sa.Column("delivered_at", sa.DateTime, nullable=True),
    # The entry's id in the system's own timeline (a Tryton note id), so an
    # erasure can remove it there too.
    sa.Column("external_id", sa.String(64), nullable=True),
    # Other records the entry is about (" ref ref "): its source, and related
    # records such as a deal's person, whose erasure removes this entry too.
    sa.Column("mentions", sa.Text, nullable=True),
    # v6: the outcome the entry tells; its text is '' when rendered from that
    # outcome when read. Outcomes are the timeline: a row is kept only for what an
    # outcome does not hold (delivery, related records, erasure).
    sa.Column("outcome_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=True),
)
sa.Index("crmsync_activities_ref", activities.c.record_ref, activities.c.id)
sa.Index("crmsync_activities_undelivered", activities.c.deliver, activities.c.delivered_at)
# v6: the row of an outcome's entry (its delivery), found from the outcome.
activities_outcome = sa.Index("crmsync_activities_outcome", activities.c.outcome_id)

# Records erased under GDPR: never synced again, whatever a stale source says.
erased = sa.Table(
    "crmsync_erased",
    metadata,
    sa.Column("record_ref", sa.String(400), primary_key=True),
    sa.Column("erased_at", sa.DateTime, nullable=False),
    sa.Column("erased_by", sa.String(128), nullable=False),
)

# -- v6: compact shadows -------------------------------------------------------------

# The key lists of shadows, so a shadow is stored as ``[shape, value, ...]``
# instead of repeating its keys on every pair. The id is a checksum of the
# keys (no id to allocate, so a rolled-back batch leaves nothing stale).
shapes = sa.Table(
    "crmsync_shapes",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("names", sa.Text, nullable=False),  # the keys, a JSON list
)

# -- v8: rules ----------------------------------------------------------------------

# One row per time a rule fired for a change: what it saw, and how far its actions
# got. Delivery (claim, lease, retry, failure) is a queue message of link
# ``rule:NAME``, side ``action``, whose record id is this row's id.
rule_firings = sa.Table(
    "crmsync_rule_firings",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("rule", sa.String(128), nullable=False),
    sa.Column("record_ref", sa.String(400), nullable=False),
    sa.Column("record_values", sa.Text, nullable=False),  # canonical JSON when it fired
    sa.Column("changed", sa.Text, nullable=False),  # JSON list of the fields that changed
    sa.Column("fired_at", sa.DateTime, nullable=False),
    sa.Column("step", sa.Integer, nullable=False, default=0),  # actions done, in order
    # The action begun and not known to be done: its effect may exist (probed on retry).
    sa.Column("tried_step", sa.Integer, nullable=True),
)
sa.Index("crmsync_rule_firings_ref", rule_firings.c.record_ref)

V1_TABLES = [meta, cursors, messages, identities, runs, outcomes]
V2_TABLES = [tokens, audit, webhook_deliveries, pushed_records, link_state]


def _v1(conn: sa.Connection) -> None:
    for_dialect(conn.dialect.name)
    metadata.create_all(conn, tables=V1_TABLES, checkfirst=True)


def _v2(conn: sa.Connection) -> None:
    have = {c["name"] for c in sa.inspect(conn).get_columns(messages.name)}
    # Fixed DDL of our own (no input reaches it); the types are portable.
    if "claimed_by" not in have:
        conn.execute(sa.text("ALTER TABLE crmsync_messages ADD COLUMN claimed_by VARCHAR(64)"))
    if "lease_until" not in have:
        ts = "TIMESTAMP" if conn.dialect.name == "postgresql" else "DATETIME"
        conn.execute(sa.text(f"ALTER TABLE crmsync_messages ADD COLUMN lease_until {ts}"))
    metadata.create_all(conn, tables=V2_TABLES, checkfirst=True)


def _v3(conn: sa.Connection) -> None:
    metadata.create_all(conn, tables=[quota_use], checkfirst=True)


def _v4(conn: sa.Connection) -> None:
    metadata.create_all(conn, tables=[trigger_seen], checkfirst=True)


def _v5(conn: sa.Connection) -> None:
    metadata.create_all(conn, tables=[activities, erased], checkfirst=True)


# The first outcome id whose timeline entry is rendered from the outcome (v6);
# earlier outcomes have their entry stored as text in crmsync_activities.
TIMELINE_FROM = "timeline_from_outcome"


def _v6(conn: sa.Connection) -> None:
    """Timelines rendered from outcomes; a create's logged values kept with its pair,
    plain creates logged a page per row; shadows stored without their keys."""
    insp = sa.inspect(conn)
    big = "BIGINT" if conn.dialect.name == "postgresql" else "INTEGER"
    # Fixed DDL of our own (no input reaches it); the types are portable.
    if "outcome_id" not in {c["name"] for c in insp.get_columns(activities.name)}:
        conn.execute(sa.text(f"ALTER TABLE crmsync_activities ADD COLUMN outcome_id {big}"))
    activities_outcome.create(conn, checkfirst=True)
    have_i = {c["name"] for c in insp.get_columns(identities.name)}
    if "first_shadow" not in have_i:
        conn.execute(sa.text("ALTER TABLE crmsync_identities ADD COLUMN first_shadow TEXT"))
    if "created_in" not in have_i:
        conn.execute(sa.text(f"ALTER TABLE crmsync_identities ADD COLUMN created_in {big}"))
    if "records" not in {c["name"] for c in insp.get_columns(outcomes.name)}:
        conn.execute(sa.text("ALTER TABLE crmsync_outcomes ADD COLUMN records INTEGER"))
    metadata.create_all(conn, tables=[shapes], checkfirst=True)
    have = conn.execute(sa.select(meta.c.value).where(meta.c.key == TIMELINE_FROM)).scalar()
    if have is None:
        # Outcomes logged so far have their timeline entry stored as text already.
        last = conn.execute(sa.select(sa.func.max(outcomes.c.id))).scalar() or 0
        conn.execute(sa.insert(meta).values(key=TIMELINE_FROM, value=str(int(last) + 1)))
    _without_rowid(conn, identities)
    _without_rowid(conn, trigger_seen)


def _without_rowid(conn: sa.Connection, table: sa.Table) -> None:
    """SQLite: rebuild ``table`` as WITHOUT ROWID, its rows kept (the primary key
    is the row: one b-tree instead of a rowid table plus the key's index)."""
    if conn.dialect.name != "sqlite":
        return
    sql = conn.execute(
        sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :n"),
        {"n": table.name},
    ).scalar()
    if sql is None or "WITHOUT ROWID" in sql.upper():
        return
    # Fixed names of our own tables (no input reaches this DDL).
    old = f"{table.name}_rowid"
    cols = ", ".join(r[1] for r in conn.exec_driver_sql(f"PRAGMA table_info({table.name})"))
    conn.exec_driver_sql(f"ALTER TABLE {table.name} RENAME TO {old}")
    for ix in table.indexes:
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {ix.name}")
    table.create(conn)
    conn.exec_driver_sql(f"INSERT INTO {table.name} ({cols}) SELECT {cols} FROM {old}")
    conn.exec_driver_sql(f"DROP TABLE {old}")


def _v7(conn: sa.Connection) -> None:
    for_dialect(conn.dialect.name)
    for ix in messages.indexes:
        if ix.name == "crmsync_messages_running":
            ix.create(conn, checkfirst=True)


def _v8(conn: sa.Connection) -> None:
    metadata.create_all(conn, tables=[rule_firings], checkfirst=True)


# Step n brings the schema from version n-1 to n.
MIGRATIONS: list[Callable[[sa.Connection], None]] = [_v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8]
SCHEMA_VERSION = len(MIGRATIONS)
