# Over 500 lines on purpose: one concept (a value's type: conversion, compatibility, JSON form).
"""Field value conversion, type compatibility and the canonical JSON form.

``converter`` runs for every mapped field of every record, so it builds one
specialised closure per mapping up front and the common case (same type, no
constraint) is the ``identity`` function itself: callers may skip the call
with ``if conv is not identity``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from crmsync.model import FieldSpec, FieldType

Convert = Callable[[Any], Any]


class ConversionError(ValueError):
    """A value cannot be written to a field; ``reason`` is shown to people as is."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def identity(v: Any) -> Any:
    return v


_SCALAR = frozenset(
    {
        FieldType.STRING,
        FieldType.INTEGER,
        FieldType.DECIMAL,
        FieldType.BOOLEAN,
        FieldType.DATE,
        FieldType.DATETIME,
        FieldType.CHOICE,
    }
)
_STRUCTURED = frozenset({FieldType.REFERENCE, FieldType.DOCUMENT, FieldType.LIST})
_NUMERIC = frozenset({FieldType.INTEGER, FieldType.DECIMAL})
_TEXT = frozenset({FieldType.STRING, FieldType.CHOICE})

_ARTICLE = {
    FieldType.STRING: "a string",
    FieldType.INTEGER: "an integer",
    FieldType.DECIMAL: "a decimal",
    FieldType.BOOLEAN: "a boolean",
    FieldType.DATE: "a date",
    FieldType.DATETIME: "a datetime",
    FieldType.CHOICE: "a choice",
    FieldType.REFERENCE: "a reference",
    FieldType.DOCUMENT: "a document",
    FieldType.LIST: "a list",
    FieldType.BINARY: "a binary (bytes)",
}


def is_scalar(ftype: FieldType) -> bool:
    return ftype in _SCALAR


def compatible(src: FieldType, dst: FieldType) -> str | None:
    """None when values of ``src`` may be mapped to ``dst`` (checked per value at run
    time), else the reason the mapping is refused."""
    if src == dst:
        return None
    if src in _STRUCTURED or dst in _STRUCTURED or FieldType.BINARY in (src, dst):
        # Bytes are not text: a string written into a BLOB passes no driver cleanly.
        ok = False
    elif src in _TEXT or dst in _TEXT:
        # Text carries anything scalar; a choice is text limited to a list, but dates
        # as pick-list entries make no sense.
        if FieldType.CHOICE in (src, dst):
            other = dst if src == FieldType.CHOICE else src
            ok = other not in (FieldType.DATE, FieldType.DATETIME)
        else:
            ok = True
    elif src in _NUMERIC and dst in _NUMERIC:
        ok = True
    elif {src, dst} == {FieldType.BOOLEAN, FieldType.INTEGER}:
        # 0/1 flags; an integer other than 0/1 is rejected per value.
        ok = True
    elif {src, dst} == {FieldType.DATE, FieldType.DATETIME}:
        ok = True
    else:
        ok = False
    if ok:
        return None
    return f"{_ARTICLE[src]} cannot be written to {_ARTICLE[dst]} field"


# -- rendering values in reasons -------------------------------------------------


def _show(v: Any) -> str:
    if isinstance(v, bytes | bytearray | memoryview):
        return f"binary data ({len(bytes(v))} bytes)"
    if isinstance(v, str):
        return repr(v) if len(v) <= 60 else repr(v[:57] + "...")
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, Decimal | float):
        return decimal_text(_to_decimal_exact(v)) if _finite(v) else str(v)
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, list | tuple):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    return str(v)


def _finite(v: Decimal | float) -> bool:
    return v.is_finite() if isinstance(v, Decimal) else math.isfinite(v)


def _to_decimal_exact(v: Decimal | float) -> Decimal:
    # str() of a float is its shortest round-trip text: 0.1 -> Decimal('0.1').
    return v if isinstance(v, Decimal) else Decimal(str(v))


def decimal_text(d: Decimal) -> str:
    """Canonical text of a finite Decimal: no exponent, no trailing zeros, no '-0'."""
    s = str(d)  # much faster than format(); only exponent forms need the slow path
    if "E" in s:
        s = format(d, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    if s == "-0":
        return "0"
    return s


# -- per-type parsers (value is never None here) ---------------------------------

_TRUE_WORDS = frozenset({"yes", "true", "1", "y", "on"})
_FALSE_WORDS = frozenset({"no", "false", "0", "n", "off"})


def _to_string(v: Any) -> str:
    t = type(v)
    if t is str:
        return v
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return str(v)
    if isinstance(v, Decimal | float):
        if not _finite(v):
            raise ConversionError(f"expected a finite number, got {v}")
        return decimal_text(_to_decimal_exact(v))
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, str):  # str subclasses (enums)
        return str(v)
    if isinstance(v, int):
        return str(int(v))
    raise ConversionError(f"expected text, got {_show(v)}")


def _to_decimal(v: Any) -> Decimal:
    t = type(v)
    if t is Decimal:
        if not v.is_finite():
            raise ConversionError(f"expected a number, got {v}")
        return v
    if t is int:
        return Decimal(v)
    if t is float:
        if not _finite(v):
            raise ConversionError(f"expected a number, got {v}")
        return Decimal(str(v))
    if isinstance(v, str):
        text = v.strip()
        try:
            d = Decimal(text)
        except InvalidOperation:
            raise ConversionError(f"expected a number, got {_show(v)}") from None
        if not d.is_finite():
            raise ConversionError(f"expected a number, got {_show(v)}")
        return d
    if isinstance(v, int) and not isinstance(v, bool):
        return Decimal(int(v))
    raise ConversionError(f"expected a number, got {_show(v)}")


def _to_integer(v: Any) -> int:
    t = type(v)
    if t is int:
        return v
    if t is bool:
        return int(v)
    if t is str:
        text = v.strip()
        try:
            return int(text)
        except ValueError:
            pass
    d = _to_decimal(v)
    if d != d.to_integral_value():
        raise ConversionError(f"expected a whole number, got {_show(v)}")
    return int(d)


def _to_boolean(v: Any) -> bool:
    t = type(v)
    if t is bool:
        return v
    if isinstance(v, str):
        word = v.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    elif isinstance(v, int | Decimal | float) and not isinstance(v, bool) and v in (0, 1):
        return v == 1
    raise ConversionError(f"expected yes/no, got {_show(v)}")


def _to_date(v: Any) -> date:
    t = type(v)
    if t is date:
        return v
    if isinstance(v, datetime):
        if v.time() != time(0):
            raise ConversionError(f"expected a date without a time of day, got {_show(v)}")
        return v.date()
    if isinstance(v, date):
        return date(v.year, v.month, v.day)
    if isinstance(v, str):
        text = v.strip()
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ConversionError(f"expected a date (YYYY-MM-DD), got {_show(v)}") from None
        return _to_date(dt)
    raise ConversionError(f"expected a date (YYYY-MM-DD), got {_show(v)}")


def _to_datetime(v: Any) -> datetime:
    if isinstance(v, datetime):
        return v
    if isinstance(v, date):
        return datetime(v.year, v.month, v.day)
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v.strip())
        except ValueError:
            pass
    raise ConversionError(f"expected a date and time (YYYY-MM-DDTHH:MM:SS), got {_show(v)}")


def _to_binary(v: Any) -> bytes:
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v)
    raise ConversionError(f"expected binary data (bytes), got {_show(v)}")


def _structured(v: Any) -> Any:
    return v


_PARSERS: dict[FieldType, Callable[[Any], Any]] = {
    FieldType.STRING: _to_string,
    FieldType.CHOICE: _to_string,
    FieldType.INTEGER: _to_integer,
    FieldType.DECIMAL: _to_decimal,
    FieldType.BOOLEAN: _to_boolean,
    FieldType.DATE: _to_date,
    FieldType.DATETIME: _to_datetime,
    FieldType.REFERENCE: _structured,
    FieldType.DOCUMENT: _structured,
    FieldType.LIST: _structured,
    FieldType.BINARY: _to_binary,
}

# Same-type conversions that stay the identity: every value of these is fine.
# Decimal (floats from FLOAT columns) and boolean (0/1 from TINYINT) are
# normalised because they would otherwise compare unequal to the shadow.
_TRUSTED = frozenset(
    {
        FieldType.STRING,
        FieldType.CHOICE,
        FieldType.REFERENCE,
        FieldType.DOCUMENT,
        FieldType.LIST,
    }
)
# Same-type conversions that only check the Python type: a connector hands over
# what the database holds when the driver cannot make it the column's type
# (SQLite text in an INTEGER/DATE column, MariaDB's '0000-00-00', PostgreSQL's
# 'infinity'), and that value must be rejected here, per field, not written on.
_TYPE_CHECKED = frozenset(
    {FieldType.INTEGER, FieldType.DATE, FieldType.DATETIME, FieldType.BINARY}
)


_PY_TYPE: dict[FieldType, type] = {
    FieldType.STRING: str,
    FieldType.INTEGER: int,
    FieldType.DECIMAL: Decimal,
    FieldType.BOOLEAN: bool,
    FieldType.DATE: date,
    FieldType.DATETIME: datetime,
    FieldType.BINARY: bytes,
}


def converter(src: FieldSpec | None, dst: FieldSpec, *, trust_type: bool = False) -> Convert:
    """A function converting one source value to ``dst``'s type, raising ``ConversionError``.

    ``src=None`` means the source type is unknown (config defaults, payloads):
    values are converted by their Python type. ``trust_type`` skips the type
    check of same-type values (for comparing values, never for writing them).
    """
    dtype = dst.type
    trusted = _TRUSTED | _TYPE_CHECKED if trust_type else _TRUSTED
    if (
        src is not None
        and src.type == dtype
        and dtype in trusted
        and dst.nullable
        and dst.max_length is None
        and not (dtype == FieldType.CHOICE and dst.choices)
    ):
        return identity

    parse = _PARSERS[dtype]
    text_target = dtype in _TEXT
    nullable = dst.nullable
    steps: list[Callable[[Any], Any]] = []

    if dtype == FieldType.DECIMAL:
        # NaN and infinities come typed from the driver (PostgreSQL NUMERIC
        # 'NaN', float columns) and would skip the parser's own check.
        def finite(d: Decimal) -> Decimal:
            if not d.is_finite():
                raise ConversionError(f"expected a number, got {d}")
            return d

        steps.append(finite)
    if dtype == FieldType.DECIMAL and dst.scale is not None:
        quantum = Decimal(1).scaleb(-dst.scale)

        def quantize(d: Decimal) -> Decimal:
            try:
                return d.quantize(quantum, rounding=ROUND_HALF_EVEN)
            except InvalidOperation:
                raise ConversionError(f"number too large: {_show(d)}") from None

        steps.append(quantize)
    if text_target and dst.max_length is not None:
        limit = dst.max_length

        def check_length(s: str) -> str:
            if len(s) > limit:
                raise ConversionError(f"expected at most {limit} characters, got {len(s)}")
            return s

        steps.append(check_length)
    if dtype == FieldType.CHOICE and dst.choices:
        allowed = frozenset(dst.choices)
        listing = ", ".join(dst.choices)

        def check_choice(s: str) -> str:
            if s not in allowed:
                raise ConversionError(f"expected one of {listing}, got {_show(s)}")
            return s

        steps.append(check_choice)

    if len(steps) == 1:
        post = steps[0]
    elif steps:

        def post(v: Any) -> Any:
            for step in steps:
                v = step(v)
            return v
    else:
        post = identity

    fast = _PY_TYPE.get(dtype)

    def convert(v: Any) -> Any:
        # Values already of the target's Python type skip parsing (the common case).
        if type(v) is fast:
            return post(v)
        if v is None or (not text_target and type(v) is str and not v.strip()):
            # An empty text cell means "no value" for a typed field.
            if nullable:
                return None
            raise ConversionError("a value is required")
        if dtype == FieldType.CHOICE and v == "":
            if nullable:
                return None
            raise ConversionError("a value is required")
        return post(parse(v))

    if post is identity and dtype != FieldType.CHOICE:

        def convert_plain(v: Any) -> Any:
            if type(v) is fast:
                return v
            return convert(v)

        return convert_plain
    return convert


# -- canonical JSON form ---------------------------------------------------------


def to_json(v: Any) -> Any:
    """The canonical JSON-able form: equal values give equal forms.

    Decimal -> canonical text ('10.50' and '10.5' both give '10.5'); dates ->
    ISO text; aware datetimes in UTC; bool/int/str/None unchanged.
    """
    t = type(v)
    if t is str or t is int or t is bool or v is None:
        return v
    if t is Decimal:
        return decimal_text(v) if v.is_finite() else str(v)
    if t is datetime:
        if v.tzinfo is not None:
            v = v.astimezone(UTC)
        return v.isoformat()
    if t is date:
        return v.isoformat()
    if t is float:
        return decimal_text(Decimal(str(v))) if _finite(v) else str(v)
    if t is list or t is tuple:
        return [to_json(x) for x in v]
    if t is dict:
        return {str(k): to_json(x) for k, x in v.items()}
    # Subclasses (str enums, TimeStamp, ...) take the slower path.
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, str):
        return str(v)
    if isinstance(v, datetime):
        return to_json(
            datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, v.tzinfo)
        )
    if isinstance(v, date):
        return date(v.year, v.month, v.day).isoformat()
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def from_json(v: Any, ftype: FieldType) -> Any:
    """The inverse of ``to_json`` for a value of a field of type ``ftype``."""
    if v is None:
        return None
    if ftype == FieldType.DECIMAL:
        return _to_decimal(v)
    if ftype == FieldType.DATETIME:
        return _to_datetime(v)
    if ftype == FieldType.DATE:
        return _to_date(v)
    if ftype == FieldType.INTEGER:
        return _to_integer(v)
    if ftype == FieldType.BOOLEAN:
        return _to_boolean(v)
    if ftype == FieldType.BINARY and isinstance(v, str):
        return bytes.fromhex(v)
    return v


def _key(v: Any) -> Any:
    # Comparison key: numbers of any Python type compare by value, bools stay apart.
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, int | Decimal | float):
        if isinstance(v, int):
            return ("n", str(v))
        return ("n", decimal_text(_to_decimal_exact(v)) if _finite(v) else str(v))
    if isinstance(v, datetime):
        return ("t", to_json(v))
    if isinstance(v, date):
        return ("d", v.isoformat())
    if isinstance(v, list | tuple):
        return ("l", tuple(_key(x) for x in v))
    if isinstance(v, dict):
        return ("m", tuple(sorted((str(k), _key(x)) for k, x in v.items())))
    return ("o", v)


def equal(a: Any, b: Any) -> bool:
    """Whether two values of one field type are the same canonically
    (Decimal('1.0') == Decimal('1'); an aware datetime equals the same instant)."""
    if a is b:
        return True
    ta = type(a)
    if ta is type(b) and (ta is str or ta is int or ta is bool or ta is date):
        return a == b
    if a is None or b is None:
        return False
    return _key(a) == _key(b)


# -- value maps ------------------------------------------------------------------


def value_key(v: Any) -> str:
    """The text a source value is looked up by in a ``values:`` map."""
    t = type(v)
    if t is str:
        return v
    if t is bool:
        return "true" if v else "false"
    if isinstance(v, Decimal | float):
        return decimal_text(_to_decimal_exact(v)) if _finite(v) else str(v)
    if isinstance(v, datetime | date):
        return v.isoformat()
    return str(v)


def _aliases(key: str) -> list[str]:
    """Other spellings a config key matches: 'True' -> 'true', '1.50' -> '1.5'."""
    out = []
    low = key.lower()
    if low in ("true", "false") and low != key:
        out.append(low)
    try:
        d = Decimal(key.strip())
    except InvalidOperation:
        return out
    if d.is_finite():
        canon = decimal_text(d)
        if canon != key:
            out.append(canon)
    return out


# What a value with no entry in a ``values:`` map becomes (config ``unmapped:``).
UNMAPPED_REJECT = "reject"
UNMAPPED_KEEP = "keep"
UNMAPPED_VALUE = "value"
_LISTED = 8  # entries of a values: map named in a rejection reason


def _listing(items: list[str]) -> str:
    head = ", ".join(items[:_LISTED])
    return head + (f", ... ({len(items)} in all)" if len(items) > _LISTED else "")


def value_mapper(
    values: dict[str, Any] | None,
    backward: bool,
    unmapped: str = UNMAPPED_REJECT,
    replacement: Any = None,
    default: Any = None,
) -> Convert:
    """Maps a value through a link's ``values:`` dict (inverted when ``backward``).

    A value with no entry is rejected (``ConversionError`` with the reason),
    kept as it is (``unmapped="keep"``) or replaced by ``replacement``
    (``unmapped="value"``). An empty value (None or '') is never unmapped: it
    becomes ``default`` when one is given (looked up in the map first, so a
    default spelled as a source entry is mapped; otherwise written as is, a
    value in the receiving side's terms), else it passes through.
    """
    if not values:
        return identity
    table: dict[str, Any] = {}
    if backward:
        for key, target in values.items():
            table.setdefault(value_key(target), key)
    else:
        table.update(values)
    for key in list(table):
        for alias in _aliases(key):
            table.setdefault(alias, table[key])
    missing = object()
    if default is not None:
        found = table.get(value_key(default), missing)
        empty_out = default if found is missing else found
    else:
        empty_out = missing
    if unmapped == UNMAPPED_REJECT:
        if backward:
            missing_what = "is none of the targets in values: ("
            entries = _listing(list(dict.fromkeys(value_key(t) for t in values.values())))
        else:
            missing_what = "has no entry in values: ("
            entries = _listing(list(values))
        hint = "); set unmapped: keep or {value: ...} to write it"
    elif unmapped not in (UNMAPPED_KEEP, UNMAPPED_VALUE):
        raise ValueError(f"unmapped: expected reject, keep or a value, got {unmapped!r}")

    def mapped(v: Any) -> Any:
        if v is None:
            return None if empty_out is missing else empty_out
        out = table.get(v if type(v) is str else value_key(v), missing)
        if out is not missing:
            return out  # the common case: one lookup
        if v == "":
            return v if empty_out is missing else empty_out
        if unmapped == UNMAPPED_KEEP:
            return v
        if unmapped == UNMAPPED_VALUE:
            return replacement
        raise ConversionError(f"value {_show(v)} {missing_what}{entries}{hint}")

    return mapped
