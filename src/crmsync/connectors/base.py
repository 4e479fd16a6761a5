"""The connector interface: how the engine speaks to one system.

Connectors know objects, fields and records; they know nothing about links.
Ids cross this boundary as text (the state database stores them as text);
the connector converts them back to the key's own type.

Cursor contract (incremental reads), written down because capture relies on it:

* A cursor is an opaque JSON-serialisable dict made by the connector.
* ``read_changes(obj, cursor, limit)`` returns records whose
  ``(updated_at, key)`` is strictly greater than the cursor, ordered by
  ``(updated_at, key)``, at most ``limit``; rows that share one ``updated_at``
  across a page boundary are neither skipped nor repeated because the key
  breaks the tie.
* ``cursor=None`` starts at the beginning of time.
* Rows whose ``updated_at`` is NULL are never returned by ``read_changes``;
  ``scan`` (used by full runs) returns every row, NULL or not.
* ``start_cursor(obj)`` returns a cursor positioned *before* the current
  high-water mark, so rows stamped at that instant are read again, never lost.
* ``lookback`` (seconds) makes ``read_changes`` start that much earlier than
  the cursor, to catch transactions that commit late with an older stamp.
* A connector does not filter rows read again: the engine queues them like any
  other (a waiting message per record collapses) and apply finds them
  unchanged, so a re-read costs a read, never a write (``engine.runner``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from crmsync.errors import SchemaError
from crmsync.model import ObjectSpec, Record

Cursor = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a connector supports, declared as data."""

    batch_size: int = 500
    upsert: bool = False
    hard_delete: bool = True
    activities: bool = False
    deep_links: bool = False


@dataclass(slots=True)
class ChangePage:
    """One page of changes and the cursor after its last row."""

    records: list[Record]
    cursor: Cursor | None
    # False when this page was shorter than the limit (nothing more for now).
    more: bool = False
    # Records were hard-deleted and the system cannot say which (Tryton's
    # log loses the id): the engine checks the ids it knows with ``existing``.
    check_known: bool = False
    # Rows of this page whose updated_at cannot be read (MariaDB's zero date,
    # SQLite text): id -> why. Not in ``records``; the cursor passes them.
    unreadable: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class WriteResult:
    """Per-item results of a batch write; one bad item never fails the others.

    ``created`` holds the new ids in the order of the ``creates`` given;
    an entry is None when that create failed, with its reason in ``errors``
    under the key ``"create:<index>"``. Failed updates/deletes are keyed by id.
    An item in ``refused`` was written, but without the fields listed there.
    """

    created: list[str | None] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    # Items written without some fields the system refused (a value out of
    # range, a constraint): same keys as ``errors``, then field -> reason.
    refused: dict[str, dict[str, str]] = field(default_factory=dict)


class Connector(ABC):
    """A connection to one system."""

    capabilities: Capabilities = Capabilities()

    def __init__(self, name: str) -> None:
        self.name = name

    # -- description ---------------------------------------------------
    @abstractmethod
    def objects(self) -> list[str]:
        """Names of the objects this system has (as configured)."""

    @abstractmethod
    def describe(self, obj: str) -> ObjectSpec:
        """The object's typed fields (reflected from the live system)."""

    # -- reads -----------------------------------------------------------
    @abstractmethod
    def read_changes(
        self, obj: str, cursor: Cursor | None, limit: int, lookback: float = 0.0
    ) -> ChangePage:
        """Records changed after ``cursor`` (see the module docstring)."""

    @abstractmethod
    def start_cursor(self, obj: str) -> Cursor | None:
        """A cursor just before the current high-water mark (None: empty)."""

    @abstractmethod
    def scan(self, obj: str, after_id: str | None, limit: int) -> list[Record]:
        """Every record in key order after ``after_id`` (full runs)."""

    def count(self, obj: str) -> int | None:
        """How many records the object has, for progress bars (None: unknown)."""
        return None

    @abstractmethod
    def read(self, obj: str, ids: Sequence[str]) -> dict[str, Record]:
        """Records by id; ids that do not exist are absent from the result."""

    def existing(self, obj: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` still exist (not deleted, not archived)."""
        return set(self.read(obj, ids))

    @abstractmethod
    def find(self, obj: str, field_name: str, values: Sequence[Any]) -> list[Record]:
        """Records whose ``field_name`` equals one of ``values`` (match keys)."""

    # -- writes ----------------------------------------------------------
    @abstractmethod
    def write(
        self,
        obj: str,
        creates: Sequence[Mapping[str, Any]] = (),
        updates: Sequence[tuple[str, Mapping[str, Any]]] = (),
        deletes: Sequence[str] = (),
        *,
        keep: Collection[str] = (),
    ) -> WriteResult:
        """Create, update and hard-delete in batches, with per-item results.

        A connector that writes a refused row without its refused fields (listed
        in ``refused``) never drops a field of ``keep`` from a create (the link's
        match keys, which make a retried create find its record): that create fails.

        Raises ``SystemUnavailable`` when the system cannot be reached (nothing
        is assumed written then).
        """

    def distinct_values(self, obj: str, field_name: str, limit: int) -> list[Any] | None:
        """Up to ``limit`` different non-empty values ``field_name`` holds, in order
        (``check`` compares them with a ``values:`` map); None when the system
        cannot tell cheaply. A field with ``choices`` needs no call: those are its values."""
        return None

    def options(self, obj: str, field_name: str) -> list[tuple[str, str]] | None:
        """The options of a pick-list field as (value, label), read now (a new
        option added since ``describe`` is in it); None when the field has no
        fixed list. The default: the described ``choices``, each its own label."""
        fs = self.describe(obj).fields.get(field_name)
        if fs is None or not fs.choices:
            return None
        return [(c, c) for c in fs.choices]

    def related_ids(self, obj: str, rid: str) -> dict[str, tuple[str, str]]:
        """The records ``rid`` references through mapped refs: ref -> (object, id)."""
        return {}

    def refs(self, obj: str) -> dict[str, str]:
        """References mappings may follow (``company`` in ``company.city``): ref -> object."""
        return {}

    def add_activities(self, obj: str, items: Sequence[tuple[str, str]]) -> list[str]:
        """Write ``(record id, text)`` into the records' own timeline (notes);
        returns the new entries' ids in order.

        Only for connectors whose ``capabilities.activities`` is True.
        """
        raise NotImplementedError(f"{self.name} keeps no activity timeline")

    def add_event_activity(
        self, obj: str, rid: str, subject: str, body: str, at: datetime, *, probe: bool
    ) -> str | None:
        """Log an event (a rule's ``activity``) on record ``rid``; its id, if any.

        With ``probe``, an earlier attempt may have written it: return that one."""
        raise SchemaError("", f"system {self.name!r} cannot hold activities")

    def remove_activities(self, ids: Sequence[str]) -> None:
        """Delete timeline entries made by ``add_activities`` (GDPR erasure)."""
        raise NotImplementedError(f"{self.name} keeps no activity timeline")

    def count_calls(self) -> int:
        """Calls made so far, by every thread."""
        return 0

    def thread_calls(self) -> int:
        """Calls made so far by the calling thread: quotas measure one batch with it,
        exactly, while other threads of the process use the same connector."""
        return self.count_calls()

    def close(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Release connections."""
