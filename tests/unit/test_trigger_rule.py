"""Trigger semantics, pure: a condition fires when it becomes true against the values
last seen (kept as canonical JSON), and not again while it holds."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from pydantic import TypeAdapter

from crmsync.config.models import Criteria
from crmsync.engine.trigger import compile_trigger, seen_values, trigger_fields
from crmsync.model import FieldSpec, FieldType, ObjectSpec

SPEC = ObjectSpec(
    "document",
    "id",
    {
        "id": FieldSpec("id", FieldType.STRING),
        "amount": FieldSpec("amount", FieldType.DECIMAL, scale=2),
        "signed_on": FieldSpec("signed_on", FieldType.DATE),
        "status": FieldSpec("status", FieldType.STRING),
        "approved": FieldSpec("approved", FieldType.BOOLEAN),
    },
)


def run(when: dict[str, Any], states: list[dict[str, Any]]) -> list[bool]:
    """Feed states in order, remembering what was seen as the engine does."""
    c = TypeAdapter(Criteria).validate_python(when)
    fires = compile_trigger(c, SPEC)
    fields = trigger_fields(c)
    prev: dict[str, Any] | None = None
    out = []
    for cur in states:
        out.append(fires(prev, cur))
        prev = seen_values(fields, cur)
    return out


@pytest.mark.parametrize(
    ("when", "states", "want"),
    [
        # a decimal threshold, remembered as '99.5' text, compared as a number
        ({"field": "amount", "op": "ge", "value": 100},
         [{"amount": Decimal("99.5")}, {"amount": Decimal("100.00")},
          {"amount": Decimal("250")}, {"amount": Decimal("20")}, {"amount": Decimal("100")}],
         [False, True, False, False, True]),
        # a date threshold, remembered as ISO text
        ({"field": "signed_on", "op": "lt", "value": "2025-01-01"},
         [{"signed_on": None}, {"signed_on": date(2024, 5, 1)}, {"signed_on": date(2024, 6, 1)}],
         [False, True, False]),
        # booleans from drivers that give 0/1
        ({"field": "approved", "op": "is_true"},
         [{"approved": 0}, {"approved": 1}, {"approved": True}, {"approved": 0},
          {"approved": 1}],
         [False, True, False, False, True]),
        ({"field": "status", "op": "not_in", "value": ["draft", "sent"]},
         [{"status": "draft"}, {"status": "signed"}, {"status": "paid"}],
         [False, True, False]),
        ({"field": "status", "op": "is_not_empty"},
         [{"status": ""}, {"status": "x"}, {"status": "y"}, {"status": None}, {"status": "z"}],
         [False, True, False, False, True]),
        # first sight counts as changed from nothing: fires if the condition holds
        ({"field": "amount", "op": "gt", "value": 1},
         [{"amount": Decimal("5")}, {"amount": Decimal("6")}],
         [True, False]),
        # changed is a moment: fires on every change, whatever held before
        ({"field": "status", "op": "changed"},
         [{"status": "a"}, {"status": "a"}, {"status": "b"}, {"status": "c"}],
         [True, False, True, True]),
    ],
)
def test_fires_once_when_the_condition_becomes_true(
    when: dict[str, Any], states: list[dict[str, Any]], want: list[bool]
) -> None:
    assert run(when, states) == want
