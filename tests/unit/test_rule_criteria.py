"""A rule's criteria on a change: every op on the types it fits, event ops and nesting.

Each case: the criteria, the values the rule saw last (None: a new record), the
values now, and whether the rule fires.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from pydantic import TypeAdapter

from crmsync.config.models import Criteria, RuleConfig
from crmsync.convert import to_json
from crmsync.engine.rules.criteria import when_problems
from crmsync.engine.rules.engine import compile_rule, evaluate
from crmsync.model import FieldSpec, FieldType, ObjectSpec, Record

SPEC = ObjectSpec(
    "contact",
    "id",
    {
        "id": FieldSpec("id", FieldType.INTEGER),
        "status": FieldSpec("status", FieldType.STRING),
        "stage": FieldSpec("stage", FieldType.CHOICE, choices=("new", "won", "lost")),
        "score": FieldSpec("score", FieldType.INTEGER),
        "amount": FieldSpec("amount", FieldType.DECIMAL, scale=2),
        "due": FieldSpec("due", FieldType.DATE),
        "dnc": FieldSpec("dnc", FieldType.BOOLEAN),
        "owner": FieldSpec("owner", FieldType.STRING),
        "updated_at": FieldSpec("updated_at", FieldType.DATETIME),
    },
    updated_at="updated_at",
)

BASE: dict[str, Any] = {"status": "Open", "stage": "new", "score": 10, "amount": Decimal("5.00"),
                        "due": date(2026, 1, 1), "dnc": False, "owner": "kim"}


def fires(when: Any, before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
    rc = RuleConfig.model_validate({"on": "crm.contact", "when": when,
                                    "then": [{"sync": "x"}]})
    rule = compile_rule("r", rc, SPEC)
    mem = None if before is None else {k: to_json(v) for k, v in {**BASE, **before}.items()}
    return evaluate(rule, Record("1", {**BASE, **after}), mem).fires


C = dict  # a condition, for short
CASES: list[tuple[str, Any, dict[str, Any] | None, dict[str, Any], bool]] = [
    # event ops
    ("changed: yes", C(field="owner", op="changed"), {}, {"owner": "lee"}, True),
    ("changed: other field", C(field="owner", op="changed"), {}, {"score": 11}, False),
    ("changed: new record", C(field="owner", op="changed"), None, {}, True),
    ("changed_to: to it", C(field="status", op="changed_to", value="Closed"), {},
     {"status": "Closed"}, True),
    ("changed_to: already", C(field="status", op="changed_to", value="Closed"),
     {"status": "Closed"}, {"status": "Closed", "score": 1}, False),
    ("changed_to: elsewhere", C(field="status", op="changed_to", value="Closed"), {},
     {"status": "Won"}, False),
    ("changed_to: new record", C(field="status", op="changed_to", value="Closed"), None,
     {"status": "Closed"}, True),
    ("changed_from: away", C(field="status", op="changed_from", value="Open"), {},
     {"status": "Closed"}, True),
    ("changed_from: not from it", C(field="status", op="changed_from", value="Won"), {},
     {"status": "Closed"}, False),
    ("changed_from: new record", C(field="status", op="changed_from", value="Open"), None,
     {"status": "Closed"}, False),
    ("changed_to: integer", C(field="score", op="changed_to", value="50"), {},
     {"score": 50}, True),
    ("changed_to: decimal scale", C(field="amount", op="changed_to", value="7.5"), {},
     {"amount": Decimal("7.50")}, True),
    ("changed_to: date", C(field="due", op="changed_to", value="2026-02-01"), {},
     {"due": date(2026, 2, 1)}, True),
    ("changed_to: boolean", C(field="dnc", op="changed_to", value=True), {}, {"dnc": True}, True),
    ("becomes ge: crosses", C(field="score", op="becomes", value={"op": "ge", "value": 50}),
     {"score": 40}, {"score": 60}, True),
    ("becomes ge: stays above", C(field="score", op="becomes", value={"op": "ge", "value": 50}),
     {"score": 60}, {"score": 70}, False),
    ("becomes ge: drops", C(field="score", op="becomes", value={"op": "ge", "value": 50}),
     {"score": 60}, {"score": 40}, False),
    ("becomes ge: new record", C(field="score", op="becomes", value={"op": "ge", "value": 50}),
     None, {"score": 60}, True),
    ("becomes lt decimal", C(field="amount", op="becomes", value={"op": "lt", "value": "1"}),
     {}, {"amount": Decimal("0.50")}, True),
    ("becomes is_true", C(field="dnc", op="becomes", value={"op": "is_true"}), {},
     {"dnc": True}, True),
    ("becomes is_empty", C(field="owner", op="becomes", value={"op": "is_empty"}), {},
     {"owner": None}, True),
    ("becomes in", C(field="stage", op="becomes", value={"op": "in", "value": ["won", "lost"]}),
     {}, {"stage": "won"}, True),
    ("becomes gt date", C(field="due", op="becomes", value={"op": "gt", "value": "2026-06-01"}),
     {}, {"due": date(2026, 7, 1)}, True),
    # filter ops hold on the change (something changed and the condition holds now)
    ("eq on a change", C(field="status", op="eq", value="Open"), {}, {"score": 2}, True),
    ("eq not holding", C(field="status", op="eq", value="Won"), {}, {"score": 2}, False),
    ("ne", C(field="status", op="ne", value="Won"), {}, {"score": 2}, True),
    ("lt integer", C(field="score", op="lt", value=20), {}, {"score": 15}, True),
    ("le decimal", C(field="amount", op="le", value="5"), {}, {"score": 2}, True),
    ("gt date", C(field="due", op="gt", value="2025-12-31"), {}, {"score": 2}, True),
    ("ge integer fails", C(field="score", op="ge", value=50), {}, {"score": 49}, False),
    ("in", C(field="stage", op="in", value=["new", "won"]), {}, {"score": 2}, True),
    ("not_in", C(field="stage", op="not_in", value=["new"]), {}, {"score": 2}, False),
    ("contains", C(field="owner", op="contains", value="i"), {}, {"score": 2}, True),
    ("starts_with", C(field="owner", op="starts_with", value="ki"), {}, {"score": 2}, True),
    ("is_true", C(field="dnc", op="is_true"), {}, {"dnc": True}, True),
    ("is_false", C(field="dnc", op="is_false"), {}, {"score": 2}, True),
    ("is_empty", C(field="owner", op="is_empty"), {}, {"owner": None}, True),
    ("is_not_empty", C(field="owner", op="is_not_empty"), {}, {"owner": None}, False),
    # no change, no firing, whatever holds
    ("no change", C(field="status", op="eq", value="Open"), {}, {}, False),
    ("only the stamp changed", C(field="status", op="eq", value="Open"), {},
     {"updated_at": "2026-01-01T00:00:00"}, False),
    # nesting: the issue's own shape
    ("all/any: dnc",
     {"all": [C(field="status", op="changed_to", value="Closed"),
              {"any": [C(field="dnc", op="is_true"), C(field="owner", op="changed")]}]},
     {}, {"status": "Closed", "dnc": True}, True),
    ("all/any: owner",
     {"all": [C(field="status", op="changed_to", value="Closed"),
              {"any": [C(field="dnc", op="is_true"), C(field="owner", op="changed")]}]},
     {}, {"status": "Closed", "owner": "lee"}, True),
    ("all/any: neither",
     {"all": [C(field="status", op="changed_to", value="Closed"),
              {"any": [C(field="dnc", op="is_true"), C(field="owner", op="changed")]}]},
     {}, {"status": "Closed"}, False),
    ("no when: every change", None, {}, {"score": 3}, True),
]


@pytest.mark.parametrize(("when", "before", "after", "want"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_criteria(when: Any, before: Any, after: dict[str, Any], want: bool) -> None:
    assert fires(when, before, after) is want


def test_fields_the_memory_lacks_are_adopted_not_changed() -> None:
    rc = RuleConfig.model_validate({"on": "crm.contact", "when": {"field": "owner",
                                    "op": "changed"}, "then": [{"sync": "x"}]})
    rule = compile_rule("r", rc, SPEC)
    seen = evaluate(rule, Record("1", dict(BASE)), {"status": "Open"})
    assert not seen.fires and seen.changed == []


BAD = [
    (C(field="nope", op="changed"), "field", "'nope' not found"),
    (C(field="dnc", op="contains", value="x"), "op", "contains"),
    (C(field="score", op="changed_to", value="many"), "value", ""),
    (C(field="score", op="becomes", value={"op": "starts_with", "value": "1"}), "value.op", ""),
    (C(field="due", op="becomes", value={"op": "gt", "value": "soon"}), "value.value", ""),
]


@pytest.mark.parametrize(("when", "path", "text"), BAD)
def test_problems_name_the_key(when: Any, path: str, text: str) -> None:
    crit = TypeAdapter(Criteria).validate_python(when)
    got = when_problems(crit, SPEC)
    assert got and got[0][0] == path and text in got[0][1], got


def test_becomes_needs_a_condition() -> None:
    with pytest.raises(ValueError, match="becomes expects value"):
        RuleConfig.model_validate({"on": "a.b", "when": C(field="x", op="becomes", value=50),
                                   "then": [{"sync": "x"}]})
    with pytest.raises(ValueError, match="only allowed in a rule"):
        from crmsync.config.models import TriggerConfig

        TriggerConfig.model_validate({"when": C(field="x", op="changed_from", value=1)})
