"""Request and response bodies of the HTTP API (they make the OpenAPI document)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints


def _aware(d: datetime) -> datetime:
    # The state database keeps naive UTC; the API says so explicitly (RFC 3339).
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d


UtcDatetime = Annotated[datetime, AfterValidator(_aware)]
# Printable text only: ids and names reach SQL as bound values, never raw
# control characters (PostgreSQL refuses NUL in text).
RecordId = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")
]

QueueStatus = Literal["pending", "running", "failed"]


class ErrorOut(BaseModel):
    detail: Any = Field(description="what was wrong")


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    schema_version: int | None = Field(description="state database schema version")


class QueueCounts(BaseModel):
    pending: int = 0
    running: int = 0
    failed: int = 0


class RunOut(BaseModel):
    id: int
    link: str
    kind: str
    status: str
    counts: dict[str, Any]
    started_at: UtcDatetime
    finished_at: UtcDatetime | None
    error: str | None


class LinkOut(BaseModel):
    name: str
    source: str = Field(description="SYSTEM.OBJECT")
    target: str = Field(description="SYSTEM.OBJECT")
    direction: str
    schedule: str | None
    enabled: bool = Field(description="the config's `enabled`, overridden by the API/CLI switch")
    enabled_changed_by: str | None = Field(description="who last switched it, if anyone")
    enabled_changed_at: UtcDatetime | None
    next_run_at: UtcDatetime | None
    queue: QueueCounts
    oldest_waiting_at: UtcDatetime | None = Field(
        description="when the oldest pending or running message was queued"
    )
    paused_messages: int = Field(
        0,
        description="messages waiting because a system did not answer (attempts unspent); "
        "more than 0 means the link is paused until the system answers",
    )
    quota_waiting: int = Field(
        0,
        description="pending messages held back because a system's quota allows no call "
        "now (they go out when it reopens)",
    )
    quota_resets_at: UtcDatetime | None = Field(
        None,
        description="when the spent quota reopens for this link (null: no quota holds it)",
    )
    quota_system: str | None = Field(None, description="the system whose quota holds it")
    last_run: RunOut | None


class SyncIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[RecordId] | None = Field(
        None,
        max_length=10_000,
        description="source record ids to sync now; without: run the whole link now",
    )


class RecordOutcomeOut(BaseModel):
    id: str = Field(description="the requested source record id")
    status: Literal["queued", "skipped", "not found"] = Field(
        description="queued: it syncs next; skipped: it would not sync (see reason); "
        "not found: no such record in the source system"
    )
    reason: str | None = Field(
        None,
        description="why it was skipped or not found (e.g. \"does not pass the link's "
        "filter\", \"trigger condition not met\"), or a note on a queued one",
    )


class SyncOut(BaseModel):
    queued: int = Field(description="records queued now")
    run_requested: bool = False
    skipped: int = Field(0, description="requested records that would not sync (see records)")
    not_found: int = Field(0, description="requested records not in the source system")
    records: list[RecordOutcomeOut] | None = Field(
        None,
        description="one outcome per requested record, in request order (also in the log: "
        "crmsync log --link NAME); null when no records were given",
    )


class MessageOut(BaseModel):
    id: int
    link: str
    side: str
    record_id: str
    op: str
    status: str
    attempts: int
    available_at: UtcDatetime
    created_at: UtcDatetime
    last_error: str | None


class RetryOut(BaseModel):
    retried: int = Field(description="failed messages put back in the queue")


class OutcomeOut(BaseModel):
    id: int
    run_id: int | None
    link: str
    source_ref: str | None
    target_ref: str | None
    action: str
    status: str
    fields: list[dict[str, Any]] = Field(
        description="per field: updated (old -> new), unchanged, conflict or rejected (reason)"
    )
    message: str | None
    at: UtcDatetime


class ActivityOut(BaseModel):
    id: int
    link: str
    record_ref: str
    at: UtcDatetime
    kind: str = Field(description="created, updated, matched, deleted, failed or erased")
    text: str
    deliver: bool = Field(description="also written into the system's own timeline")
    delivered_at: UtcDatetime | None


class SystemCalls(BaseModel):
    system: str
    calls: int = Field(description="connector calls made by this service process")


class QuotaOut(BaseModel):
    system: str
    calls: int
    per: str
    used: int
    remaining: int
    resets_at: UtcDatetime | None
    rate: float | None = Field(None, description="calls per second allowed, if set")
    rate_wait_s: float = Field(0.0, description="seconds until the rate allows more work")


class QuotasOut(BaseModel):
    quotas: list[QuotaOut] = Field(
        description="per-system API budgets (systems with a `quota:` in the config)"
    )
    calls: list[SystemCalls]


class AuditOut(BaseModel):
    id: int
    at: UtcDatetime
    actor: str
    action: str
    target: str | None
    detail: Any


class DeepLinkOut(BaseModel):
    system: str
    object: str
    id: str
    url: str | None = Field(description="the record in its own system (None: no `links_to`)")


class ErasedRecordOut(BaseModel):
    record: str = Field(description="SYSTEM.OBJECT:ID")
    result: Literal["anonymized", "already anonymized", "not found", "no anonymize"] = Field(
        description="what the erasure did to this record in its system"
    )
    fields: list[str] = Field(description="the fields that hold the replacement values")


class EraseOut(BaseModel):
    record: str = Field(description="the record the erasure was asked for")
    by: str
    erased_at: UtcDatetime = Field(description="when the record was first erased")
    records: list[ErasedRecordOut] = Field(
        description="the record and every record linked to it, in every system"
    )
    scrubbed: dict[str, int] = Field(description="rows of crmsync's own state scrubbed, per kind")
