"""Records, changes and outcomes: the pure data every layer shares (no I/O here)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class FieldType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    DECIMAL = "decimal"
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "datetime"
    CHOICE = "choice"
    REFERENCE = "reference"
    DOCUMENT = "document"
    # Bytes (BLOB, bytea): maps only to binary fields, never to text.
    BINARY = "binary"
    LIST = "list"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A typed attribute of an object, as the connector reflects it."""

    name: str
    type: FieldType
    nullable: bool = True
    max_length: int | None = None
    # Decimal places the system keeps (None: not declared).
    scale: int | None = None
    choices: tuple[str, ...] | None = None
    # The system fills it itself (autoincrement key, computed column).
    read_only: bool = False
    # A create must give it a value: NOT NULL, no default, not filled by the system.
    required: bool = False


@dataclass(frozen=True, slots=True)
class ObjectSpec:
    """A record type of a system with its typed fields."""

    name: str
    key: str
    fields: dict[str, FieldSpec]
    updated_at: str | None = None
    # True when the system assigns the key on create (autoincrement).
    key_generated: bool = False


@dataclass(frozen=True, slots=True, order=True)
class RecordRef:
    """Names one record: ``system.object:id``."""

    system: str
    object: str
    id: str

    def __str__(self) -> str:
        return f"{self.system}.{self.object}:{self.id}"

    @staticmethod
    def prefix(system: str, object: str) -> str:
        """``system.object:``: what every ref of one object starts with (a batch's
        refs are this plus the id; state lookups take it)."""
        return f"{system}.{object}:"

    @classmethod
    def parse(cls, text: str) -> RecordRef:
        """Parse ``SYSTEM.OBJECT:ID``; raises ValueError naming what was expected."""
        head, sep, rid = text.partition(":")
        system, dot, obj = head.partition(".")
        if not sep or not dot or not system or not obj or not rid:
            raise ValueError(f"expected SYSTEM.OBJECT:ID (e.g. crm.company:42), got {text!r}")
        return cls(system, obj, rid)


@dataclass(slots=True)
class Record:
    """One object instance as read from a system.

    ``id`` is always the key rendered as text (state stores ids as text);
    ``version`` is the system's own change marker (its ``updated_at``).
    """

    id: str
    values: dict[str, Any]
    version: Any = None


def applied_version(rec: Record | None) -> str | None:
    """A record's version as a pair keeps it once applied: its change stamp and a
    digest of its values.

    The stamp alone does not prove an unchanged record where the column has
    whole seconds (MariaDB DATETIME: two edits in one second share it); with
    the digest, capture can pass over a record it re-reads through its
    lookback when that exact state was applied already.
    """
    if rec is None or rec.version is None:
        return None
    # Keys are unique, so sorting never compares values of different types.
    digest = zlib.crc32(repr(sorted(rec.values.items())).encode())
    return f"{rec.version}#{digest:08x}"


class ChangeOp(StrEnum):
    UPSERT = "upsert"
    DELETE = "delete"


class Side(StrEnum):
    SOURCE = "source"
    TARGET = "target"

    @property
    def other(self) -> Side:
        return Side.TARGET if self is Side.SOURCE else Side.SOURCE


class FieldStatus(StrEnum):
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    CONFLICT = "conflict"
    REJECTED = "rejected"


@dataclass(slots=True)
class FieldOutcome:
    """What happened to one mapped field of one record."""

    field: str
    status: FieldStatus
    # Which side was written ("target"/"source") when updated.
    side: str | None = None
    old: Any = None
    new: Any = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "status": self.status.value}
        if self.side is not None:
            out["side"] = self.side
        if self.status in (FieldStatus.UPDATED, FieldStatus.CONFLICT):
            out["old"] = self.old
            out["new"] = self.new
        if self.reason is not None:
            out["reason"] = self.reason
        return out


# Actions of the outcomes a sync request leaves (``engine.requests``).
REQUEST_ACTIONS = ("queued", "skipped", "not found")


class Action(StrEnum):
    """What happened to one record in one pass."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    MATCHED = "matched"
    DELETED = "deleted"
    SKIPPED = "skipped"
    # Not synced because the source record does not pass the link's filter.
    FILTERED = "filtered"
    # Not synced because its trigger's condition did not become true now.
    WAITING = "waiting"
    REJECTED = "rejected"
    FAILED = "failed"


@dataclass(slots=True)
class Outcome:
    """The outcome of one record: the action and every field's outcome."""

    link: str
    source_id: str | None
    target_id: str | None
    action: Action
    fields: list[FieldOutcome] = field(default_factory=list)
    message: str | None = None
    # Paired by match key this pass (a first pairing, not a create).
    matched: bool = False
    # Nothing new happened (e.g. a rejection already reported): not logged.
    quiet: bool = False
    # For a create: the canonical values written (``fields`` then holds only
    # the rejected ones); expanded by ``all_fields``.
    created: dict[str, Any] | None = None

    def all_fields(self) -> list[FieldOutcome]:
        """Every field's outcome, a create's written fields included."""
        if self.created is None:
            return self.fields
        # A field created empty (a backward-only field, an empty source value)
        # was not written: it is no ``updated ∅ -> ∅``.
        written = [
            FieldOutcome(k, FieldStatus.UPDATED, "target", None, v)
            for k, v in self.created.items()
            if not k.startswith("~") and v is not None
        ]
        return written + self.fields

    @property
    def conflicts(self) -> int:
        return sum(1 for f in self.fields if f.status is FieldStatus.CONFLICT)

    @property
    def rejected(self) -> int:
        return sum(1 for f in self.fields if f.status is FieldStatus.REJECTED)
