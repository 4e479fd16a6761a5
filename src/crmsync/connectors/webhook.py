"""Push-only systems (``connector: webhook``): records are whatever the system last pushed.

crmsync cannot ask such a system for anything, so it keeps every pushed
record in its own state database (``crmsync_pushed_records``) and serves
reads from there. The receiver (``api/hooks.py``) calls ``push`` inside the
delivery's state transaction.

Change capture uses a per-system sequence number: every push gives the record
``seq = max(seq) + 1`` computed in the pushing transaction, under a lock (a
PostgreSQL advisory lock; SQLite serialises writers), so seq order is commit
order and a cursor ``{"seq": N}`` never skips a record that commits later.

Ordering of deliveries: senders retry and reorder. A change may carry a
``version`` (an integer, or an ISO timestamp); a push whose version is older
than or equal to the stored one is ignored, so duplicated and shuffled
deliveries converge to the newest. A change without a version always applies:
senders that can reorder must send versions. Versions of one record are
compared only when both are integers or both timestamps; otherwise the push
applies. Partial ``values`` merge into the stored record (with versions, send
whole records: an ignored older push cannot contribute its fields).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from crmsync.config.models import PushedObjectConfig, WebhookSystemConfig
from crmsync.connectors.base import Capabilities, ChangePage, Connector, Cursor, WriteResult
from crmsync.convert import (
    ConversionError,
    Convert,
    converter,
    from_json,
    to_json,
    value_key,
)
from crmsync.errors import SchemaError, UnknownRecordType
from crmsync.model import FieldSpec, FieldType, ObjectSpec, Record
from crmsync.state.store import StateStore, dumps, utcnow

# Records per page when ``find`` filters a scan in Python (push-only sizes are small).
_FIND_PAGE = 1000

Version = int | str


class PushRejected(ValueError):
    """A pushed change cannot be stored; ``field`` names the value at fault (None: the change)."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.reason = reason
        self.field = field


def parse_version(v: Any) -> Version | None:
    """A change's version in its stored form: int as is, a timestamp as UTC ISO text.

    Raises ``PushRejected`` for anything else (bools, floats, unparsable text).
    """
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise PushRejected("expected an integer or an ISO timestamp", "version")
    if isinstance(v, int):
        return v
    try:
        ts = datetime.fromisoformat(v.strip())
    except ValueError:
        raise PushRejected(
            "expected an integer or an ISO timestamp (e.g. 2026-05-01T12:00:00Z)", "version"
        ) from None
    # Naive timestamps are UTC; stored normalised so equal instants compare equal.
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return ts.isoformat()


def _not_newer(new: Version, old: Version | None) -> bool:
    """True when ``new`` is older than or equal to ``old`` (the push is ignored)."""
    if old is None:
        return False
    if isinstance(new, int) and isinstance(old, int):
        return new <= old
    if isinstance(new, str) and isinstance(old, str):
        return datetime.fromisoformat(new) <= datetime.fromisoformat(old)
    return False  # kinds differ: not comparable, the push applies


class WebhookConnector(Connector):
    """A system that pushes its changes to ``POST /hooks/{system}`` and cannot be written to."""

    # Nothing can be written; hard deletes are not ours to make either.
    capabilities = Capabilities(batch_size=500, upsert=False, hard_delete=False)

    def __init__(self, name: str, cfg: WebhookSystemConfig, state: StateStore) -> None:
        super().__init__(name)
        self.cfg = cfg
        self.state = state
        self._specs: dict[str, ObjectSpec] = {}
        self._convs: dict[str, dict[str, Convert]] = {}

    # -- description ---------------------------------------------------
    def objects(self) -> list[str]:
        return list(self.cfg.objects)

    def _ocfg(self, obj: str) -> PushedObjectConfig:
        ocfg = self.cfg.objects.get(obj)
        if ocfg is None:
            raise UnknownRecordType(f"system {self.name!r} has no object {obj!r}")
        return ocfg

    def describe(self, obj: str) -> ObjectSpec:
        """From the declared fields only: no database is touched (``check`` relies on it)."""
        spec = self._specs.get(obj)
        if spec is None:
            ocfg = self._ocfg(obj)
            fields = {ocfg.key: FieldSpec(ocfg.key, FieldType.STRING, nullable=False)}
            for fname, ftype in ocfg.fields.items():
                if fname != ocfg.key:
                    fields[fname] = FieldSpec(fname, FieldType(ftype))
            spec = ObjectSpec(name=obj, key=ocfg.key, fields=fields, updated_at=None)
            self._specs[obj] = spec
        return spec

    def _converters(self, obj: str) -> dict[str, Convert]:
        convs = self._convs.get(obj)
        if convs is None:
            spec = self.describe(obj)
            convs = {n: converter(None, f) for n, f in spec.fields.items() if n != spec.key}
            self._convs[obj] = convs
        return convs

    # -- pushes (called by the receiver inside its state transaction) ----
    def check_values(self, obj: str, values: Mapping[str, Any] | None) -> dict[str, Any]:
        """Pushed values typed by the declared fields, in canonical JSON form.

        Raises ``PushRejected`` naming the first field that is unknown or does
        not convert (the receiver answers 422 and writes nothing).
        """
        if not values:
            return {}
        convs = self._converters(obj)
        key = self._ocfg(obj).key
        out: dict[str, Any] = {}
        for fname, raw in values.items():
            if fname == key:
                continue  # the id travels as the change's id
            conv = convs.get(fname)
            if conv is None:
                known = ", ".join(convs)
                raise PushRejected(f"unknown field; fields: {known}", fname)
            try:
                out[fname] = to_json(conv(raw))
            except ConversionError as exc:
                raise PushRejected(exc.reason, fname) from None
        return out

    def push(
        self,
        conn: sa.Connection,
        obj: str,
        record_id: str,
        values: Mapping[str, Any] | None,
        op: str,
        version: Any = None,
        *,
        now: datetime | None = None,
    ) -> bool:
        """Store one pushed change; False when it was ignored as not newer than the stored one.

        ``op`` is ``created``, ``updated`` or ``deleted``; ``deleted`` keeps the
        last values but hides the record from ``read``/``scan``.
        """
        if op not in ("created", "updated", "deleted"):
            raise PushRejected(f"unknown op {op!r}: expected created, updated or deleted", "op")
        checked = self.check_values(obj, values)
        ver = parse_version(version)
        st = self.state
        # Lock before reading: the stored version and the next seq must not
        # change under us until commit.
        st.lock_pushed_system(conn, self.name)
        stored = st.pushed_get(conn, self.name, obj, record_id)
        merged: dict[str, Any] = {}
        old_ver: Version | None = None
        if stored is not None:
            doc = json.loads(stored[0])
            merged = doc.get("values", {})
            old_ver = doc.get("version")
        if ver is not None and _not_newer(ver, old_ver):
            return False
        merged.update(checked)
        doc = {"values": merged, "version": ver if ver is not None else old_ver}
        seq = st.pushed_max_seq(conn, self.name) + 1
        st.pushed_put(
            conn, self.name, obj, record_id, dumps(doc),
            deleted=op == "deleted", seq=seq, now=now or utcnow(),
        )
        return True

    # -- reads -----------------------------------------------------------
    def _record(self, obj: str, row: Any, *, deleted_marker: bool = False) -> Record:
        spec = self.describe(obj)
        stored = json.loads(row.fields).get("values", {})
        values: dict[str, Any] = {spec.key: row.record_id}
        for fname, fs in spec.fields.items():
            if fname != spec.key:
                values[fname] = from_json(stored.get(fname), fs.type)
        if deleted_marker and row.deleted:
            marker = self._ocfg(obj).deleted
            if marker is not None:
                values[marker.field] = marker.value
        return Record(row.record_id, values, row.updated_at)

    def read_changes(
        self, obj: str, cursor: Cursor | None, limit: int, lookback: float = 0.0
    ) -> ChangePage:
        """Records pushed after ``cursor`` in seq order, deleted ones included.

        ``lookback`` is not needed: seq order is commit order.
        """
        self._ocfg(obj)
        after = int((cursor or {}).get("seq") or 0)
        rows = self.state.pushed_changes(self.name, obj, after, limit)
        recs = [self._record(obj, r, deleted_marker=True) for r in rows]
        new_cursor = {"seq": int(rows[-1].seq)} if rows else cursor
        return ChangePage(recs, new_cursor, more=len(rows) >= limit)

    def start_cursor(self, obj: str) -> Cursor | None:
        # Everything up to the current max seq is committed (pushes hold a
        # lock while they pick theirs), so later pushes are all above it.
        self._ocfg(obj)
        with self.state.connect() as c:
            return {"seq": self.state.pushed_max_seq(c, self.name)}

    def scan(self, obj: str, after_id: str | None, limit: int) -> list[Record]:
        self._ocfg(obj)
        rows = self.state.pushed_scan(self.name, obj, after_id, limit)
        return [self._record(obj, r) for r in rows]

    def count(self, obj: str) -> int | None:
        self._ocfg(obj)
        return self.state.pushed_count(self.name, obj)

    def read(self, obj: str, ids: Sequence[str]) -> dict[str, Record]:
        self._ocfg(obj)
        if not ids:
            return {}
        rows = self.state.pushed_read(self.name, obj, [str(i) for i in ids])
        return {r.record_id: self._record(obj, r) for r in rows}

    def find(self, obj: str, field_name: str, values: Sequence[Any]) -> list[Record]:
        spec = self.describe(obj)
        if field_name not in spec.fields:
            raise SchemaError(
                "match",
                f"field {field_name!r} is not declared for {self.name}.{obj}; "
                f"fields: {', '.join(spec.fields)}",
            )
        wanted = {value_key(v) for v in values if v is not None}
        if not wanted:
            return []
        if field_name == spec.key:
            return list(self.read(obj, sorted(wanted)).values())
        # Values are stored as JSON, so no index can answer: filter a paged scan.
        out: list[Record] = []
        after: str | None = None
        while True:
            page = self.scan(obj, after, _FIND_PAGE)
            out += [
                r for r in page
                if r.values.get(field_name) is not None
                and value_key(r.values[field_name]) in wanted
            ]
            if len(page) < _FIND_PAGE:
                return out
            after = page[-1].id

    # -- writes ----------------------------------------------------------
    def write(
        self,
        obj: str,
        creates: Sequence[Mapping[str, Any]] = (),
        updates: Sequence[tuple[str, Mapping[str, Any]]] = (),
        deletes: Sequence[str] = (),
        *,
        keep: Collection[str] = (),
    ) -> WriteResult:
        """Every item fails, visibly and per record: a push-only system cannot be written to."""
        reason = f"system {self.name} is push-only: crmsync cannot write to it"
        result = WriteResult(created=[None] * len(creates))
        for i in range(len(creates)):
            result.errors[f"create:{i}"] = reason
        for rid, _ in updates:
            result.errors[str(rid)] = reason
        for rid in deletes:
            result.errors[str(rid)] = reason
        return result
