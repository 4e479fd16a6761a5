"""The connector conformance harness: what the suite needs from a connector under test.

The suite itself lives in ``tests/conformance``; it checks the contract written
in ``crmsync.connectors.base`` against every connector. A connector takes part
through one :class:`Subject`: the connector built from config text the way users
build it, the object the suite works on, which of its fields play which part
(:class:`Roles`), and a ``seed`` hook that puts records into the system the way
its own users would (not through ``Connector.write``), with explicit stamps
where the system lets us choose them (ties and late commits without sleeping).

What a connector does not take part in is said, with the reason, in
``Subject.lacks`` or by its ``Capabilities``; the suite skips those checks
by name and says why, never silently.

The hostile fixture (in the spirit of meltano's hostile tap): names with
spaces, unicode, reserved words and mixed case (:data:`HOSTILE`, used by the
SQL and webhook fixtures) and values that break naive quoting or truncate
(:data:`HOSTILE_TEXTS`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final

import sqlalchemy as sa

from crmsync.connectors.base import Connector, Cursor
from crmsync.model import FieldType, Record

# -- features a connector may lack (the suite skips by these names) -------------

WRITE: Final = "write"  # create/update/delete through Connector.write
HARD_DELETE: Final = "hard_delete"  # from Capabilities.hard_delete
ACTIVITIES: Final = "activities"  # from Capabilities.activities
FIELD_REJECTIONS: Final = "field_rejections"  # a refused field -> WriteResult.refused
STAMPS: Final = "stamps"  # the seed can choose a record's updated_at (or leave it NULL)
STAMP_CURSOR: Final = "stamp_cursor"  # the cursor follows updated_at (lookback applies)
HOSTILE_NAMES: Final = "hostile_names"  # object/field names are ours to choose
UNAVAILABLE: Final = "unavailable"  # the system can be made unreachable (``down``)
REFUSED_SETTING: Final = "refused_setting"  # a setting the system refuses (``misconfigured``)


class _Unstamped:
    """Seed records with no ``updated_at`` at all (NULL)."""

    def __repr__(self) -> str:
        return "UNSTAMPED"


UNSTAMPED: Final = _Unstamped()

# A seed stamp: an explicit instant (naive UTC), the system's own clock (None), or NULL.
Stamp = datetime | _Unstamped | None
Seeder = Callable[[Sequence[Mapping[str, Any]], Stamp], list[str]]


@dataclass(frozen=True, slots=True)
class Roles:
    """Which fields of the subject's object play each part (their names may be hostile)."""

    match: str  # a text field unique per record: ``find`` looks records up by it
    text: str  # free text: long, unicode, quotes, '' kept apart from NULL
    # A field with a value the system refuses (``Subject.bad_value``); None: no such field.
    refusable: str | None = None


@dataclass(slots=True)
class Subject:
    """One connector under test and the hooks the suite needs around it."""

    label: str
    connector: Connector
    obj: str
    roles: Roles
    seed: Seeder
    # Field name -> the type ``describe`` must report for it.
    types: Mapping[str, FieldType] = field(default_factory=dict)
    # A value of ``roles.refusable`` the system refuses, on create and on update.
    bad_value: Any = None
    # Feature -> why this connector does not take part (see the names above).
    lacks: Mapping[str, str] = field(default_factory=dict)
    # The same system while it cannot be reached (a connector built from config).
    down: Callable[[], AbstractContextManager[Connector]] | None = None
    # The same system with a setting it refuses (a database it does not have).
    misconfigured: Callable[[], AbstractContextManager[Connector]] | None = None

    def lacking(self, feature: str) -> str | None:
        """Why the subject does not take part in ``feature`` (None: it does)."""
        if feature in self.lacks:
            return f"{self.label}: {self.lacks[feature]}"
        caps = self.connector.capabilities
        if feature == HARD_DELETE and not caps.hard_delete:
            return f"{self.label}: Capabilities.hard_delete is False"
        if feature == ACTIVITIES and not caps.activities:
            return f"{self.label}: Capabilities.activities is False (no timeline)"
        if feature == STAMP_CURSOR and self.connector.describe(self.obj).updated_at is None:
            return f"{self.label}: describe() has no updated_at (the cursor is not a stamp)"
        if feature == UNAVAILABLE and self.down is None:
            return f"{self.label}: no way to take the system down"
        if feature == REFUSED_SETTING and self.misconfigured is None:
            return f"{self.label}: no setting the system can refuse"
        return None


# -- values and names -------------------------------------------------------------

def token() -> str:
    """A short unique text, so records of one test never meet another's."""
    return uuid.uuid4().hex[:10]


# Values that break naive quoting, encodings or fixed-size buffers.
HOSTILE_TEXTS: Final[dict[str, str]] = {
    "quotes": "O'Brien \"the\" `tick` \\ back; -- DROP TABLE x; /* */ %s %(x)s ?",
    "unicode": "Zoë Ærø ß İ ǅ 東京 עברית مرحبا e\u0301 😀👩\u200d💻",
    "long": ("Lorem ipsum ü 😀 " * 600)[:9000],
    "whitespace": "  leading and trailing  ",
    "empty": "",
}

# Names of the hostile SQL table and webhook object: reserved words, spaces,
# unicode, mixed case, and characters drivers treat specially (%, ?).
HOSTILE: Final[dict[str, str]] = {
    "table": "Order Détails % ? select",
    "key": "order",
    "match": "select",
    "text": "Näme with Space ü",
    "refusable": "Score",
    "amount": "Amount % €",
    "flag": "CamelCase?",
    "day": "Date",
    "updated": "Last Changed",
}


def hostile_table(metadata: sa.MetaData) -> sa.Table:
    """The hostile SQL table: every name awkward, a CHECK the suite makes the database refuse."""
    h = HOSTILE
    score = sa.Column(h["refusable"], sa.Integer)
    return sa.Table(
        h["table"],
        metadata,
        sa.Column(h["key"], sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(h["match"], sa.String(200), unique=True),
        sa.Column(h["text"], sa.Text),
        score,
        sa.Column(h["amount"], sa.Numeric(12, 2)),
        sa.Column(h["flag"], sa.Boolean),
        sa.Column(h["day"], sa.Date),
        sa.Column(h["updated"], sa.DateTime, index=True),
        sa.CheckConstraint(score >= 0, name="score_not_negative"),
    )


HOSTILE_TYPES: Final[dict[str, FieldType]] = {
    HOSTILE["match"]: FieldType.STRING,
    HOSTILE["text"]: FieldType.STRING,
    HOSTILE["refusable"]: FieldType.INTEGER,
    HOSTILE["amount"]: FieldType.DECIMAL,
    HOSTILE["flag"]: FieldType.BOOLEAN,
    HOSTILE["day"]: FieldType.DATE,
}

# Python types a value of each field type may have when read.
VALUE_TYPES: Final[dict[FieldType, tuple[type, ...]]] = {
    FieldType.STRING: (str,),
    FieldType.INTEGER: (int,),
    FieldType.DECIMAL: (Decimal, int),
    FieldType.BOOLEAN: (bool,),
    FieldType.DATE: (date,),
    FieldType.DATETIME: (datetime,),
    FieldType.CHOICE: (str,),
}


# -- reading helpers ----------------------------------------------------------------

def drain(
    conn: Connector, obj: str, cursor: Cursor | None, limit: int, lookback: float = 0.0,
    max_pages: int = 500,
) -> tuple[list[Record], Cursor | None]:
    """Every page of ``read_changes`` from ``cursor`` on, as the capture loop reads
    them: only the first page reaches back by ``lookback`` (every page doing so
    would re-read an overlap longer than a page forever).

    The cursor goes through JSON between pages, as the engine keeps it in the
    state database: a cursor must survive that unchanged in meaning.
    """
    out: list[Record] = []
    for _ in range(max_pages):
        page = conn.read_changes(obj, cursor, limit, lookback)
        lookback = 0.0
        if len(page.records) > limit:
            raise AssertionError(f"a page of {len(page.records)} records for limit {limit}")
        out += page.records
        cursor = json.loads(json.dumps(page.cursor))
        if not page.more:
            return out, cursor
    raise AssertionError(f"read_changes still had more after {max_pages} pages of {limit}")


def scan_all(conn: Connector, obj: str, limit: int, max_pages: int = 500) -> list[Record]:
    """Every record by ``scan`` pages, as a full run reads them."""
    out: list[Record] = []
    after: str | None = None
    for _ in range(max_pages):
        page = conn.scan(obj, after, limit)
        out += page
        if len(page) < limit:
            return out
        after = page[-1].id
    raise AssertionError(f"scan still had more after {max_pages} pages of {limit}")


def stamp_order(records: Sequence[Record]) -> list[tuple[Any, Any]]:
    """The ``(updated_at, key)`` positions of ``records``, numeric ids as numbers."""
    return [(r.version, int(r.id) if r.id.isdigit() else r.id) for r in records]


def ids_of(records: Sequence[Record], wanted: Sequence[str] | None = None) -> list[str]:
    """Record ids in order, only those in ``wanted`` when given (shared systems hold others)."""
    keep = None if wanted is None else set(wanted)
    return [r.id for r in records if keep is None or r.id in keep]


def wrong_types(record: Record, types: Mapping[str, FieldType]) -> Iterator[str]:
    """Values of ``record`` whose Python type does not fit the described field type."""
    for name, value in record.values.items():
        ft = types.get(name)
        want = VALUE_TYPES.get(ft) if ft is not None else None
        if value is None or want is None:
            continue
        if not isinstance(value, want) or (ft is FieldType.INTEGER and isinstance(value, bool)):
            yield f"{name}={value!r} is {type(value).__name__}, described as {ft}"
