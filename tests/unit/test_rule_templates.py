"""Activity templates: fields by name (dotted for related records), braces, empty values."""

from __future__ import annotations

import pytest

from crmsync.engine.rules.actions import render, template_fields


@pytest.mark.parametrize(("template", "want"), [
    ("{status} by {owner}", "Closed by kim"),
    ("Call: {last_outcome}", "Call: "),  # empty: nothing, never "None"
    ("{company.city} / {missing}", "Oslo / "),
    ("{{literal}} {status}", "{literal} Closed"),
    ("no fields", "no fields"),
    ("{ status }", "Closed"),
])
def test_render(template: str, want: str) -> None:
    values = {"status": "Closed", "owner": "kim", "last_outcome": None, "company.city": "Oslo"}
    assert render(template, values) == want


@pytest.mark.parametrize(("template", "error"), [
    ("{status", "lone '{'"),
    ("status}", "lone '}'"),
    ("{a b}", "not a field name"),
    ("{}", "not a field name"),
    ("{0}", "not a field name"),
])
def test_malformed_templates_are_named(template: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        template_fields(template)
    assert render(template, {}) == template  # an action never fails on its text


def test_fields_named() -> None:
    assert template_fields("{a} {b.c} {{d}} {a}") == ["a", "b.c", "a"]
