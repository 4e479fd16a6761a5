from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync.convert import (
    ConversionError,
    compatible,
    converter,
    equal,
    from_json,
    identity,
    to_json,
    value_mapper,
)
from crmsync.model import FieldSpec, FieldType

T = FieldType


def f(ftype: FieldType, **kw: Any) -> FieldSpec:
    return FieldSpec("x", ftype, **kw)


def convert(value: Any, dst: FieldSpec, src: FieldType | None = None) -> Any:
    return converter(f(src) if src else None, dst)(value)


def reason(value: Any, dst: FieldSpec, src: FieldType | None = None) -> str:
    with pytest.raises(ConversionError) as info:
        convert(value, dst, src)
    assert isinstance(info.value, ValueError)
    return info.value.reason


# -- converter -----------------------------------------------------------------


def test_same_type_without_constraints_is_identity() -> None:
    for t in (T.STRING, T.CHOICE, T.LIST, T.DOCUMENT):
        assert converter(f(t), f(t)) is identity
    # Types a driver may hand over raw (text it could not convert) are checked;
    # for comparing values only, they may be trusted.
    for t in (T.INTEGER, T.DATE, T.DATETIME, T.BINARY):
        assert converter(f(t), f(t)) is not identity
        assert converter(f(t), f(t), trust_type=True) is identity
    assert converter(f(T.STRING), f(T.STRING, max_length=5)) is not identity
    assert converter(f(T.STRING), f(T.STRING, nullable=False)) is not identity


@pytest.mark.parametrize(
    ("value", "dst", "expected"),
    [
        ("42", T.INTEGER, 42),
        (" 42 ", T.INTEGER, 42),
        ("1e3", T.INTEGER, 1000),
        (Decimal("7.00"), T.INTEGER, 7),
        (True, T.INTEGER, 1),
        ("10.50", T.DECIMAL, Decimal("10.50")),
        (3, T.DECIMAL, Decimal(3)),
        (0.1, T.DECIMAL, Decimal("0.1")),
        ("yes", T.BOOLEAN, True),
        ("False", T.BOOLEAN, False),
        ("0", T.BOOLEAN, False),
        (1, T.BOOLEAN, True),
        ("2024-02-29", T.DATE, date(2024, 2, 29)),
        (datetime(2024, 1, 2), T.DATE, date(2024, 1, 2)),
        ("2024-01-02T03:04:05", T.DATETIME, datetime(2024, 1, 2, 3, 4, 5)),
        ("2024-01-02", T.DATETIME, datetime(2024, 1, 2)),
        (date(2024, 1, 2), T.DATETIME, datetime(2024, 1, 2)),
        (Decimal("1E+2"), T.STRING, "100"),
        (Decimal("10.50"), T.STRING, "10.5"),
        (12, T.STRING, "12"),
        (False, T.STRING, "false"),
        (date(2024, 1, 2), T.STRING, "2024-01-02"),
        ("", T.INTEGER, None),
        ("   ", T.DATE, None),
        ("", T.STRING, ""),
        (None, T.DECIMAL, None),
    ],
)
def test_conversions(value: Any, dst: FieldType, expected: Any) -> None:
    out = convert(value, f(dst))
    assert out == expected
    assert type(out) is type(expected)


def test_reasons_are_plain_words() -> None:
    assert reason("ten thousand", f(T.INTEGER)) == "expected a number, got 'ten thousand'"
    assert reason("ten thousand", f(T.DECIMAL)) == "expected a number, got 'ten thousand'"
    assert reason("1.5", f(T.INTEGER)) == "expected a whole number, got '1.5'"
    assert reason(Decimal("1.5"), f(T.INTEGER), T.DECIMAL) == "expected a whole number, got 1.5"
    assert reason("31/02/2024", f(T.DATE)) == "expected a date (YYYY-MM-DD), got '31/02/2024'"
    assert reason("2024-02-30", f(T.DATE)) == "expected a date (YYYY-MM-DD), got '2024-02-30'"
    assert reason("x" * 57, f(T.STRING, max_length=40)) == "expected at most 40 characters, got 57"
    assert reason("maybe", f(T.BOOLEAN)) == "expected yes/no, got 'maybe'"
    assert reason(2, f(T.BOOLEAN), T.INTEGER) == "expected yes/no, got 2"
    assert reason("C", f(T.CHOICE, choices=("A", "B"))) == "expected one of A, B, got 'C'"
    assert reason(None, f(T.STRING, nullable=False), T.STRING) == "a value is required"
    assert reason("", f(T.INTEGER, nullable=False)) == "a value is required"
    assert reason("NaN", f(T.DECIMAL)) == "expected a number, got 'NaN'"
    assert reason(datetime(2024, 1, 2, 10, 30), f(T.DATE), T.DATETIME) == (
        "expected a date without a time of day, got 2024-01-02T10:30:00"
    )
    assert reason("soon", f(T.DATETIME)) == (
        "expected a date and time (YYYY-MM-DDTHH:MM:SS), got 'soon'"
    )


def test_choice_and_length_checks_apply_after_conversion() -> None:
    conv = converter(f(T.INTEGER), f(T.CHOICE, choices=("1", "2")))
    assert conv(2) == "2"
    conv = converter(f(T.STRING), f(T.STRING, max_length=3))
    assert conv("abc") == "abc"
    assert conv(None) is None


def test_decimal_scale_quantizes_half_even() -> None:
    conv = converter(f(T.DECIMAL), f(T.DECIMAL, scale=2))
    assert conv(Decimal("1.005")) == Decimal("1.00")
    assert conv(Decimal("1.015")) == Decimal("1.02")
    assert str(conv(Decimal("3"))) == "3.00"
    assert str(conv(2.5)) == "2.50"


def test_float_from_a_database_counts_as_decimal() -> None:
    conv = converter(f(T.DECIMAL), f(T.DECIMAL))
    assert conv(1.1) == Decimal("1.1")
    assert conv(Decimal("2")) == Decimal("2")


# -- compatible -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (T.STRING, T.INTEGER),
        (T.DATE, T.STRING),
        (T.INTEGER, T.DECIMAL),
        (T.DECIMAL, T.INTEGER),
        (T.BOOLEAN, T.INTEGER),
        (T.DATE, T.DATETIME),
        (T.DATETIME, T.DATE),
        (T.CHOICE, T.STRING),
        (T.STRING, T.CHOICE),
        (T.LIST, T.LIST),
    ],
)
def test_compatible(src: FieldType, dst: FieldType) -> None:
    assert compatible(src, dst) is None


@pytest.mark.parametrize(
    ("src", "dst", "why"),
    [
        (T.DATE, T.INTEGER, "a date cannot be written to an integer field"),
        (T.INTEGER, T.DATE, "an integer cannot be written to a date field"),
        (T.DATETIME, T.DECIMAL, "a datetime cannot be written to a decimal field"),
        (T.BOOLEAN, T.DATE, "a boolean cannot be written to a date field"),
        (T.DATE, T.BOOLEAN, "a date cannot be written to a boolean field"),
        (T.LIST, T.STRING, "a list cannot be written to a string field"),
        (T.STRING, T.DOCUMENT, "a string cannot be written to a document field"),
        (T.REFERENCE, T.INTEGER, "a reference cannot be written to an integer field"),
    ],
)
def test_incompatible(src: FieldType, dst: FieldType, why: str) -> None:
    assert compatible(src, dst) == why


# -- canonical JSON ---------------------------------------------------------------


def test_to_json_canonical_forms() -> None:
    assert to_json(Decimal("10.50")) == to_json(Decimal("10.5")) == "10.5"
    assert to_json(Decimal("1E+3")) == "1000"
    assert to_json(Decimal("-0.00")) == "0"
    assert to_json(Decimal("0.0000001")) == "0.0000001"
    assert to_json(date(2024, 1, 2)) == "2024-01-02"
    assert to_json(datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02T03:04:05"
    aware = datetime(2024, 1, 2, 5, 0, tzinfo=timezone(timedelta(hours=2)))
    assert to_json(aware) == "2024-01-02T03:00:00+00:00"
    assert to_json(True) is True and to_json(7) == 7 and to_json(None) is None
    assert to_json([Decimal("1.0"), date(2024, 1, 1)]) == ["1", "2024-01-01"]


def test_equal_is_canonical() -> None:
    assert equal(Decimal("1.0"), Decimal("1"))
    assert equal(1.5, Decimal("1.50"))
    assert not equal(True, 1)
    assert not equal(None, "")
    assert equal(None, None)
    assert equal(
        datetime(2024, 1, 1, 12, tzinfo=UTC),
        datetime(2024, 1, 1, 14, tzinfo=timezone(timedelta(hours=2))),
    )
    assert not equal(datetime(2024, 1, 1), date(2024, 1, 1))


decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None)
naive_datetimes = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1))
aware_datetimes = st.datetimes(
    min_value=datetime(1900, 1, 2),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=9))]),
)
typed_values = st.one_of(
    st.tuples(st.just(T.STRING), st.text()),
    st.tuples(st.just(T.INTEGER), st.integers()),
    st.tuples(st.just(T.DECIMAL), decimals),
    st.tuples(st.just(T.BOOLEAN), st.booleans()),
    st.tuples(st.just(T.DATE), st.dates()),
    st.tuples(st.just(T.DATETIME), naive_datetimes | aware_datetimes),
    st.tuples(st.just(T.CHOICE), st.text(min_size=1)),
)


@given(typed_values)
def test_json_round_trip(pair: tuple[FieldType, Any]) -> None:
    ftype, value = pair
    form = to_json(value)
    assert json.loads(json.dumps(form)) == form
    back = from_json(form, ftype)
    assert equal(back, value)
    assert to_json(back) == form


@given(decimals, st.integers(min_value=0, max_value=6))
def test_trailing_zeros_do_not_matter(d: Decimal, zeros: int) -> None:
    padded = Decimal(format(d, "f") + ("." if "." not in format(d, "f") else "") + "0" * zeros)
    assert equal(d, padded)
    assert to_json(d) == to_json(padded)


@given(decimals, decimals)
def test_equal_agrees_with_decimal_equality(a: Decimal, b: Decimal) -> None:
    assert equal(a, b) == (a == b)
    assert equal(a, a)


@given(st.integers())
def test_integer_decimal_string_round_trip(n: int) -> None:
    assert convert(convert(n, f(T.STRING)), f(T.INTEGER)) == n
    assert convert(convert(n, f(T.DECIMAL)), f(T.INTEGER)) == n


# -- value maps --------------------------------------------------------------------


def test_value_mapper_forward_and_backward() -> None:
    values = {"1": "Active", "2": "Dormant", "true": "Yes"}
    fwd = value_mapper(values, backward=False, unmapped="keep")
    assert fwd(1) == "Active"
    assert fwd("2") == "Dormant"
    assert fwd(Decimal("1.0")) == "Active"
    assert fwd(True) == "Yes"
    assert fwd(3) == 3
    assert fwd(None) is None
    back = value_mapper(values, backward=True, unmapped="keep")
    assert back("Active") == "1"
    assert back("Other") == "Other"
    assert value_mapper(None, backward=False) is identity


def test_value_mapper_with_non_text_targets() -> None:
    back = value_mapper({"A": 1, "B": True}, backward=True)
    assert back(1) == "A"
    assert back(True) == "B"
    assert back(Decimal("1.00")) == "A"


def _rejects(fn: Any, v: Any) -> str:
    with pytest.raises(ConversionError) as info:
        fn(v)
    return info.value.reason


PICK = {"A": "Active", "I": "Inactive"}


def test_unmapped_is_rejected_by_default_with_the_reason() -> None:
    fwd = value_mapper(PICK, backward=False)
    assert fwd("A") == "Active"
    assert _rejects(fwd, "Gold") == (
        "value 'Gold' has no entry in values: (A, I); "
        "set unmapped: keep or {value: ...} to write it"
    )
    back = value_mapper(PICK, backward=True)
    assert back("Inactive") == "I"
    assert _rejects(back, "Gold") == (
        "value 'Gold' is none of the targets in values: (Active, Inactive); "
        "set unmapped: keep or {value: ...} to write it"
    )
    # A mapped value's own spelling is no entry the other way round.
    assert "no entry" in _rejects(fwd, "Active")
    assert "none of the targets" in _rejects(back, "A")


def test_unmapped_reason_names_the_first_entries_of_a_long_map() -> None:
    big = {str(i): f"v{i}" for i in range(20)}
    why = _rejects(value_mapper(big, backward=False), 99)
    assert why.startswith(
        "value 99 has no entry in values: (0, 1, 2, 3, 4, 5, 6, 7, ... (20 in all));"
    )


@pytest.mark.parametrize("backward", [False, True])
def test_unmapped_keep_and_value_in_both_directions(backward: bool) -> None:
    keep = value_mapper(PICK, backward, "keep")
    assert keep("Gold") == "Gold"
    assert keep(7) == 7
    other = value_mapper(PICK, backward, "value", "Other")
    assert other("Gold") == "Other"
    assert other(7) == "Other"
    cleared = value_mapper(PICK, backward, "value", None)
    assert cleared("Gold") is None
    # Mapped values are mapped whatever the mode.
    assert keep("Active" if backward else "A") == ("A" if backward else "Active")
    assert other("I" if not backward else "Inactive") == ("I" if backward else "Inactive")


def test_unknown_unmapped_mode_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unmapped"):
        value_mapper(PICK, False, "drop")


@pytest.mark.parametrize(
    ("values", "source", "expected"),
    [
        # YAML `1: Active` gives the key '1': an integer 1, '1' and 1.0 all match it.
        ({"1": "Active"}, 1, "Active"),
        ({"1": "Active"}, "1", "Active"),
        ({"1": "Active"}, Decimal("1.00"), "Active"),
        ({"1.50": "Half"}, Decimal("1.5"), "Half"),
        # YAML `true: Yes` / `True: Yes`: the boolean and its text spellings.
        ({"true": "Yes"}, True, "Yes"),
        ({"True": "Yes"}, True, "Yes"),
        ({"true": "Yes"}, "true", "Yes"),
        ({"false": "No"}, False, "No"),
    ],
)
def test_value_map_aliases_are_no_unmapped_values(values: dict, source: Any, expected: Any) -> None:
    assert value_mapper(values, backward=False)(source) == expected


@pytest.mark.parametrize(
    ("values", "target", "expected"),
    [
        ({"A": 1}, 1, "A"),
        ({"A": 1}, "1", "A"),
        ({"A": 1}, Decimal("1.0"), "A"),
        ({"Y": True}, True, "Y"),
        ({"Y": True}, "true", "Y"),
    ],
)
def test_inverted_map_aliases(values: dict, target: Any, expected: Any) -> None:
    assert value_mapper(values, backward=True)(target) == expected


@pytest.mark.parametrize("mode", ["reject", "keep", "value"])
@pytest.mark.parametrize("backward", [False, True])
def test_empty_is_not_unmapped(mode: str, backward: bool) -> None:
    fn = value_mapper(PICK, backward, mode, "Other")
    assert fn(None) is None
    assert fn("") == ""


def test_an_explicit_entry_for_the_empty_text_is_used() -> None:
    assert value_mapper({"": "Unknown", "A": "Active"}, False)("") == "Unknown"


_words = st.text(alphabet="abcXYZ019", min_size=1, max_size=4)


@given(st.dictionaries(_words, _words, min_size=1, max_size=6), _words)
def test_unmapped_modes_agree_on_every_value(values: dict[str, str], v: str) -> None:
    keep = value_mapper(values, False, "keep")
    other = value_mapper(values, False, "value", object())
    reject = value_mapper(values, False)
    try:
        mapped = reject(v)
    except ConversionError:
        # Unmapped: keep writes it, {value: X} writes X, reject refused it.
        assert keep(v) == v
        assert other(v) is not v and type(other(v)) is object
    else:
        assert keep(v) == mapped == other(v)
        # What a mapped value became maps back to one of the keys that give it.
        assert reject(value_mapper(values, True)(mapped)) == mapped


def test_default_fills_an_empty_value_and_is_never_rejected() -> None:
    # A default in the target's terms is written as it is...
    fwd = value_mapper(PICK, False, default="Inactive")
    assert fwd(None) == "Inactive"
    assert fwd("") == "Inactive"
    assert fwd("A") == "Active"
    assert "no entry" in _rejects(fwd, "Gold")
    # ... and one spelled as a source entry is mapped (what it did before unmapped:).
    assert value_mapper(PICK, False, default="I")(None) == "Inactive"
    # An unmapped value is no empty value: the default does not replace it.
    assert value_mapper(PICK, False, "keep", default="Inactive")("Gold") == "Gold"


# -- values a driver hands over raw (issue 10: dirty values) -------------------


@pytest.mark.parametrize(
    ("value", "ftype", "expected"),
    [
        # SQLite keeps text in typed columns; MariaDB zero dates; PostgreSQL infinity.
        ("31/12/1999", T.DATE, "expected a date (YYYY-MM-DD), got '31/12/1999'"),
        ("0000-00-00", T.DATE, "expected a date (YYYY-MM-DD), got '0000-00-00'"),
        ("infinity", T.DATE, "expected a date (YYYY-MM-DD), got 'infinity'"),
        ("0044-03-15 BC", T.DATE, "expected a date (YYYY-MM-DD), got '0044-03-15 BC'"),
        ("not a date", T.DATETIME, "expected a date and time (YYYY-MM-DDTHH:MM:SS), "
         "got 'not a date'"),
        ("0000-00-00 00:00:00", T.DATETIME, "expected a date and time "
         "(YYYY-MM-DDTHH:MM:SS), got '0000-00-00 00:00:00'"),
        ("-infinity", T.DATETIME, "expected a date and time (YYYY-MM-DDTHH:MM:SS), "
         "got '-infinity'"),
        ("xyz", T.INTEGER, "expected a number, got 'xyz'"),
        ("abc", T.DECIMAL, "expected a number, got 'abc'"),
        (Decimal("NaN"), T.DECIMAL, "expected a number, got NaN"),
        (Decimal("-Infinity"), T.DECIMAL, "expected a number, got -Infinity"),
        ("text", T.BINARY, "expected binary data (bytes), got 'text'"),
        (42, T.BINARY, "expected binary data (bytes), got 42"),
    ],
)
def test_raw_values_of_the_same_type_are_rejected(
    value: Any, ftype: FieldType, expected: str
) -> None:
    assert reason(value, f(ftype), src=ftype) == expected
    assert reason(value, f(ftype, scale=2) if ftype is T.DECIMAL else f(ftype), src=ftype) == (
        expected
    )


def test_same_type_values_still_pass_and_good_raw_text_converts() -> None:
    assert convert(7, f(T.INTEGER), T.INTEGER) == 7
    assert convert("7", f(T.INTEGER), T.INTEGER) == 7  # SQLite text that is a number
    assert convert("2020-01-31", f(T.DATE), T.DATE) == date(2020, 1, 31)
    assert convert(b"\x00\xff", f(T.BINARY), T.BINARY) == b"\x00\xff"
    assert convert(memoryview(b"ab"), f(T.BINARY), T.BINARY) == b"ab"
    assert convert(None, f(T.BINARY), T.BINARY) is None
    assert convert(Decimal("1.50"), f(T.DECIMAL), T.DECIMAL) == Decimal("1.50")


@pytest.mark.parametrize("other", [T.STRING, T.CHOICE, T.INTEGER, T.DOCUMENT, T.DATE])
def test_binary_maps_only_to_binary(other: FieldType) -> None:
    assert compatible(T.BINARY, T.BINARY) is None
    assert compatible(other, T.BINARY) is not None
    assert compatible(T.BINARY, other) is not None
    assert "binary" in (compatible(other, T.BINARY) or "")


def test_binary_json_round_trip() -> None:
    assert to_json(b"\x00\xff") == "00ff"
    assert from_json("00ff", T.BINARY) == b"\x00\xff"
