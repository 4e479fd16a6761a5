from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from crmsync.config.models import Criteria
from crmsync.engine.filters import compile_criteria, criteria_problems
from crmsync.errors import ConfigError
from crmsync.model import FieldSpec, FieldType, ObjectSpec

T = FieldType
SPEC = ObjectSpec(
    "customer",
    "id",
    {
        "id": FieldSpec("id", T.INTEGER),
        "name": FieldSpec("name", T.STRING),
        "revenue": FieldSpec("revenue", T.DECIMAL),
        "employees": FieldSpec("employees", T.INTEGER),
        "active": FieldSpec("active", T.BOOLEAN),
        "since": FieldSpec("since", T.DATE),
        "status": FieldSpec("status", T.CHOICE, choices=("new", "open", "closed")),
        "tags": FieldSpec("tags", T.LIST),
    },
)
_criteria: TypeAdapter[Any] = TypeAdapter(Criteria)


def crit(data: Any) -> Any:
    return _criteria.validate_python(data)


def pred(data: Any) -> Any:
    return compile_criteria(crit(data), SPEC)


def test_no_criteria_accepts_everything() -> None:
    assert compile_criteria(None, SPEC)({}) is True
    assert criteria_problems(None, SPEC) == []


@pytest.mark.parametrize(
    ("condition", "record", "expected"),
    [
        ({"field": "name", "op": "eq", "value": "Acme"}, {"name": "Acme"}, True),
        ({"field": "name", "op": "eq", "value": "Acme"}, {"name": "acme"}, False),
        ({"field": "name", "op": "ne", "value": "Acme"}, {"name": None}, True),
        ({"field": "employees", "op": "eq", "value": "10"}, {"employees": 10}, True),
        ({"field": "revenue", "op": "gt", "value": 1000}, {"revenue": Decimal("1000.01")}, True),
        ({"field": "revenue", "op": "gt", "value": 1000}, {"revenue": None}, False),
        ({"field": "revenue", "op": "le", "value": "1000"}, {"revenue": None}, False),
        ({"field": "revenue", "op": "eq", "value": "1.10"}, {"revenue": 1.1}, True),
        ({"field": "since", "op": "ge", "value": "2024-01-01"}, {"since": date(2024, 1, 1)}, True),
        ({"field": "since", "op": "lt", "value": "2024-01-01"}, {"since": date(2024, 1, 1)}, False),
        (
            {"field": "since", "op": "lt", "value": date(2024, 1, 2)},
            {"since": date(2024, 1, 1)},
            True,
        ),
        ({"field": "status", "op": "in", "value": ["new", "open"]}, {"status": "open"}, True),
        ({"field": "status", "op": "not_in", "value": ["new", "open"]}, {"status": "open"}, False),
        ({"field": "status", "op": "not_in", "value": ["new"]}, {}, True),
        ({"field": "employees", "op": "in", "value": ["1", 2]}, {"employees": 1}, True),
        ({"field": "name", "op": "contains", "value": "cm"}, {"name": "Acme"}, True),
        ({"field": "name", "op": "contains", "value": "CM"}, {"name": "Acme"}, False),
        ({"field": "name", "op": "contains", "value": "cm"}, {"name": None}, False),
        ({"field": "name", "op": "starts_with", "value": "Ac"}, {"name": "Acme"}, True),
        ({"field": "name", "op": "is_empty"}, {"name": "  "}, True),
        ({"field": "name", "op": "is_empty"}, {"name": None}, True),
        ({"field": "name", "op": "is_empty"}, {}, True),
        ({"field": "name", "op": "is_empty"}, {"name": "x"}, False),
        ({"field": "tags", "op": "is_empty"}, {"tags": []}, True),
        ({"field": "name", "op": "is_not_empty"}, {"name": "x"}, True),
        ({"field": "employees", "op": "is_not_empty"}, {"employees": 0}, True),
        ({"field": "active", "op": "is_true"}, {"active": True}, True),
        ({"field": "active", "op": "is_true"}, {"active": None}, False),
        ({"field": "active", "op": "is_false"}, {"active": None}, False),
        ({"field": "active", "op": "is_false"}, {"active": False}, True),
        ({"field": "active", "op": "is_true"}, {"active": 1}, True),
        ({"field": "active", "op": "eq", "value": "yes"}, {"active": True}, True),
    ],
)
def test_condition(condition: dict[str, Any], record: dict[str, Any], expected: bool) -> None:
    assert pred(condition)(record) is expected


def test_all_and_any_nest() -> None:
    p = pred(
        {
            "all": [
                {"field": "active", "op": "is_true"},
                {
                    "any": [
                        {"field": "revenue", "op": "ge", "value": 1000},
                        {"field": "status", "op": "eq", "value": "open"},
                        {"field": "name", "op": "starts_with", "value": "VIP"},
                    ]
                },
            ]
        }
    )
    assert p({"active": True, "revenue": Decimal(5000)})
    assert p({"active": True, "revenue": Decimal(1), "status": "open"})
    assert p({"active": True, "name": "VIP Corp"})
    assert not p({"active": True, "revenue": Decimal(1), "status": "new"})
    assert not p({"active": False, "revenue": Decimal(5000)})


def test_problems_name_relative_paths() -> None:
    problems = criteria_problems(
        crit(
            {
                "all": [
                    {"field": "nmae", "op": "eq", "value": "x"},
                    {"any": [{"field": "active", "op": "lt", "value": True}]},
                    {"field": "employees", "op": "contains", "value": "1"},
                    {"field": "name", "op": "is_true"},
                    {"field": "since", "op": "ge", "value": "yesterday"},
                    {"field": "employees", "op": "in", "value": [1, "two"]},
                ]
            }
        ),
        SPEC,
    )
    assert problems == [
        (
            "all[0].field",
            "field 'nmae' not found on customer "
            "(fields: id, name, revenue, employees, active, since, status, tags)",
        ),
        ("all[1].any[0].op", "op lt does not apply to boolean field 'active'"),
        ("all[2].op", "op contains does not apply to integer field 'employees'"),
        ("all[3].op", "op is_true does not apply to string field 'name'"),
        ("all[4].value", "expected a date (YYYY-MM-DD), got 'yesterday'"),
        ("all[5].value[1]", "expected a number, got 'two'"),
    ]


def test_compile_refuses_bad_criteria() -> None:
    with pytest.raises(ConfigError) as info:
        pred({"field": "nope", "op": "is_empty"})
    assert info.value.problems[0][0] == "filter.field"


@given(st.integers(), st.integers())
def test_ordering_matches_python(a: int, b: int) -> None:
    for op, expected in (("lt", a < b), ("le", a <= b), ("gt", a > b), ("ge", a >= b)):
        assert pred({"field": "employees", "op": op, "value": b})({"employees": a}) is expected


@given(st.lists(st.booleans(), min_size=1, max_size=6))
def test_all_any_match_python(bits: list[bool]) -> None:
    conds = [{"field": f"b{i}", "op": "is_true"} for i in range(len(bits))]
    spec = ObjectSpec("o", "id", {f"b{i}": FieldSpec(f"b{i}", T.BOOLEAN) for i in range(6)})
    record = {f"b{i}": v for i, v in enumerate(bits)}
    assert compile_criteria(crit({"all": conds}), spec)(record) is all(bits)
    assert compile_criteria(crit({"any": conds}), spec)(record) is any(bits)
