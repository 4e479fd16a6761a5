"""The per-field three-way merge, pure: directions, policies, echo suppression."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given

from crmsync.config.models import ConflictPolicy, Direction
from crmsync.engine.convert import identity, to_json
from crmsync.engine.merge import FieldPlan, create_values, merge
from crmsync.model import FieldStatus


def plan(name: str, direction: Direction, fwd: Any = identity, bwd: Any = identity) -> FieldPlan:
    return FieldPlan(name, name, name, direction, fwd, bwd, to_json, to_json)


def apply_result(src: dict[str, Any], tgt: dict[str, Any], m: Any) -> None:
    tgt.update(m.target_updates)
    src.update(m.source_updates)


def test_forward_field_follows_the_source_and_leaves_local_target_edits_alone() -> None:
    p = [plan("name", Direction.FORWARD)]
    m = merge(p, {"name": "new"}, {"name": "old"}, {"name": "old"}, ConflictPolicy.SOURCE, None)
    assert m.target_updates == {"name": "new"} and m.shadow == {"name": "new"}
    # target edited locally, source unchanged: a forward field is not overwritten
    m = merge(p, {"name": "old"}, {"name": "local"}, {"name": "old"}, ConflictPolicy.SOURCE, None)
    assert m.target_updates == {} and m.source_updates == {}
    assert m.fields[0].status is FieldStatus.UNCHANGED


def test_backward_field_flows_to_the_source() -> None:
    p = [plan("email", Direction.BACKWARD)]
    m = merge(p, {"email": "a"}, {"email": "b"}, {"email": "a"}, ConflictPolicy.SOURCE, None)
    assert m.source_updates == {"email": "b"} and m.target_updates == {}
    assert m.fields[0].side == "source"


@pytest.mark.parametrize(
    ("policy", "newer", "winner"),
    [
        (ConflictPolicy.SOURCE, None, "s"),
        (ConflictPolicy.TARGET, None, "t"),
        (ConflictPolicy.NEWEST, True, "s"),
        (ConflictPolicy.NEWEST, False, "t"),
    ],
)
def test_conflict_policy(policy: ConflictPolicy, newer: bool | None, winner: str) -> None:
    p = [plan("x", Direction.BOTH)]
    m = merge(p, {"x": "s"}, {"x": "t"}, {"x": "base"}, policy, newer)
    assert m.fields[0].status is FieldStatus.CONFLICT
    assert m.shadow["x"] == winner
    if winner == "s":
        assert m.target_updates == {"x": "s"} and m.source_updates == {}
    else:
        assert m.source_updates == {"x": "t"} and m.target_updates == {}


def test_unconvertible_value_is_rejected_with_reason_others_applied() -> None:
    def to_int(v: Any) -> Any:
        try:
            return None if v is None else int(v)
        except ValueError:
            raise ValueError(f"expected a number, got {v!r}") from None

    p = [plan("n", Direction.FORWARD, to_int), plan("name", Direction.FORWARD)]
    m = merge(p, {"n": "ten thousand", "name": "A"}, {"n": 1, "name": "B"}, {"n": 1, "name": "B"},
              ConflictPolicy.SOURCE, None)
    assert m.target_updates == {"name": "A"}
    rej = m.fields[0]
    assert rej.status is FieldStatus.REJECTED and "ten thousand" in (rej.reason or "")
    assert m.shadow["n"] == 1  # the base is kept for the refused field


def test_create_values_bases_backward_fields_on_the_empty_new_record() -> None:
    p = [plan("name", Direction.FORWARD), plan("email", Direction.BACKWARD)]
    values, shadow, rejected = create_values(p, {"name": "A", "email": "a@x"})
    assert values == {"name": "A"} and shadow == {"name": "A", "email": None} and not rejected
    # the next merge must not copy the empty target email back over the source
    m = merge(p, {"name": "A", "email": "a@x"}, {"name": "A", "email": None}, shadow,
              ConflictPolicy.SOURCE, None)
    assert m.source_updates == {} and m.target_updates == {}


def test_decimal_spellings_compare_equal() -> None:
    p = [plan("amount", Direction.BOTH)]
    m = merge(p, {"amount": Decimal("10.50")}, {"amount": Decimal("10.5")}, None,
              ConflictPolicy.SOURCE, None)
    assert m.target_updates == {} and m.source_updates == {}


VAL = st.sampled_from(["a", "b", "c", None])
DIRS = st.sampled_from([Direction.FORWARD, Direction.BACKWARD, Direction.BOTH])
POLICY = st.sampled_from([ConflictPolicy.SOURCE, ConflictPolicy.TARGET, ConflictPolicy.NEWEST])


@given(
    dirs=st.lists(DIRS, min_size=1, max_size=4),
    data=st.data(),
    policy=POLICY,
    newer=st.sampled_from([True, False, None]),
    first=st.booleans(),
)
def test_merge_then_merge_again_is_quiet(
    dirs: list[Direction], data: st.DataObject, policy: ConflictPolicy, newer: bool | None,
    first: bool,
) -> None:
    """Whatever the inputs, applying a merge's writes and merging again writes nothing
    (this is echo suppression: our own write coming back is not a change)."""
    plans = [plan(f"f{i}", d) for i, d in enumerate(dirs)]
    src = {p.source: data.draw(VAL) for p in plans}
    tgt = {p.target: data.draw(VAL) for p in plans}
    shadow = None if first else {p.key: data.draw(VAL) for p in plans}
    m = merge(plans, src, tgt, shadow, policy, newer)
    apply_result(src, tgt, m)
    m2 = merge(plans, src, tgt, m.shadow, policy, newer)
    assert m2.target_updates == {} and m2.source_updates == {}
    assert all(f.status is FieldStatus.UNCHANGED for f in m2.fields)


@given(
    data=st.data(),
    policy=POLICY,
)
def test_both_way_fields_converge(data: st.DataObject, policy: ConflictPolicy) -> None:
    plans = [plan(f"f{i}", Direction.BOTH) for i in range(3)]
    src = {p.source: data.draw(VAL) for p in plans}
    tgt = {p.target: data.draw(VAL) for p in plans}
    shadow = {p.key: data.draw(VAL) for p in plans}
    m = merge(plans, src, tgt, shadow, policy, data.draw(st.sampled_from([True, False, None])))
    apply_result(src, tgt, m)
    assert src == tgt == m.shadow
