"""The per-field three-way merge, pure: directions, policies, echo suppression."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given

from crmsync.config.models import ConflictPolicy, Direction
from crmsync.convert import identity, to_json
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


# -- first pairing: no shadow, so an empty value never erases a filled one -------------

POLICIES = [
    (ConflictPolicy.SOURCE, None),
    (ConflictPolicy.TARGET, None),
    (ConflictPolicy.NEWEST, True),
    (ConflictPolicy.NEWEST, False),
    (ConflictPolicy.NEWEST, None),
]
CASES = ["source_empty", "target_empty", "both_filled", "both_equal", "both_empty"]


def _first_pairing_values(case: str, empty: Any) -> tuple[Any, Any]:
    other_empty = "" if empty is None else None  # the other spelling of empty
    return {
        "source_empty": (empty, "T"),
        "target_empty": ("S", empty),
        "both_filled": ("S", "T"),
        "both_equal": ("X", "X"),
        "both_empty": (empty, other_empty),
    }[case]


def _expected(case: str, d: Direction, policy: ConflictPolicy, newer: bool | None,
              s: Any, t: Any) -> tuple[Any, Any]:
    """(source, target) after the first pairing, by the documented rule."""
    if case == "source_empty":
        return (t, t) if d is not Direction.FORWARD else (s, t)
    if case == "target_empty":
        return (s, s) if d is not Direction.BACKWARD else (s, t)
    if case == "both_filled":
        if d is Direction.FORWARD:
            return s, s
        if d is Direction.BACKWARD:
            return t, t
        source_wins = policy is ConflictPolicy.SOURCE or (
            policy is ConflictPolicy.NEWEST and newer is not False
        )
        return (s, s) if source_wins else (t, t)
    return s, t  # equal, or both empty: nothing is written


@pytest.mark.parametrize(("policy", "newer"), POLICIES, ids=lambda v: str(getattr(v, "value", v)))
@pytest.mark.parametrize("empty", [None, ""], ids=["null", "blank"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("direction", list(Direction), ids=lambda d: d.value)
def test_first_pairing_fills_the_empty_side_never_erases(
    policy: ConflictPolicy, newer: bool | None, empty: Any, case: str, direction: Direction
) -> None:
    p = [plan("phone", direction)]
    s0, t0 = _first_pairing_values(case, empty)
    src, tgt = {"phone": s0}, {"phone": t0}
    m = merge(p, src, tgt, None, policy, newer)
    apply_result(src, tgt, m)
    want = _expected(case, direction, policy, newer, s0, t0)
    assert (src["phone"], tgt["phone"]) == want
    # nothing filled became empty, and nothing was written for nothing
    for before, after in ((s0, src["phone"]), (t0, tgt["phone"])):
        assert not (before not in (None, "") and after in (None, ""))
    written = {**m.source_updates, **m.target_updates}
    assert all(v not in (None, "") for v in written.values())
    (f,) = m.fields
    if case in ("both_equal", "both_empty") or want == (s0, t0):
        assert f.status is FieldStatus.UNCHANGED and not written
    elif case == "both_filled" and direction is Direction.BOTH:
        assert f.status is FieldStatus.CONFLICT and "first pairing" in (f.reason or "")
    else:
        assert f.status is FieldStatus.UPDATED and f.new not in (None, "")
    # what was written is now the base: the next pass is quiet
    m2 = merge(p, src, tgt, m.shadow, policy, newer)
    assert m2.target_updates == {} and m2.source_updates == {}
    assert m2.fields[0].status is FieldStatus.UNCHANGED


def test_first_pairing_without_base_waits_for_the_empty_side_to_be_filled() -> None:
    """A forward field left alone at first pairing (empty source) flows once the
    source gets a value, and a later emptying at the source is a real change."""
    p = [plan("phone", Direction.FORWARD)]
    m = merge(p, {"phone": None}, {"phone": "+46 2"}, None, ConflictPolicy.TARGET, None)
    assert m.target_updates == {} and "phone" not in m.shadow
    m = merge(p, {"phone": "+46 9"}, {"phone": "+46 2"}, m.shadow, ConflictPolicy.TARGET, None)
    assert m.target_updates == {"phone": "+46 9"} and m.shadow == {"phone": "+46 9"}
    # with a base, emptying the field at the source is a change that flows
    m = merge(p, {"phone": None}, {"phone": "+46 9"}, m.shadow, ConflictPolicy.TARGET, None)
    assert m.target_updates == {"phone": None}


def test_a_new_mapping_on_an_old_pair_is_a_first_pairing_for_that_field() -> None:
    p = [plan("name", Direction.BOTH), plan("phone", Direction.BOTH)]
    shadow = {"name": "A"}  # phone was mapped after the pair was made
    m = merge(p, {"name": "A", "phone": "+46 2"}, {"name": "A", "phone": ""}, shadow,
              ConflictPolicy.TARGET, None)
    assert m.target_updates == {"phone": "+46 2"} and m.source_updates == {}


def test_null_and_blank_are_the_same_empty_after_pairing_too() -> None:
    p = [plan("phone", Direction.BOTH)]
    m = merge(p, {"phone": None}, {"phone": ""}, {"phone": None}, ConflictPolicy.TARGET, None)
    assert m.target_updates == {} and m.source_updates == {}
    assert m.fields[0].status is FieldStatus.UNCHANGED


def test_unconvertible_source_value_is_not_erased_by_an_empty_target_at_first_pairing() -> None:
    def to_int(v: Any) -> Any:
        if isinstance(v, str) and not v.isdigit():
            raise ValueError(f"expected a number, got {v!r}")
        return None if v is None else int(v)

    p = [plan("n", Direction.BACKWARD, to_int)]
    m = merge(p, {"n": "lots"}, {"n": None}, None, ConflictPolicy.TARGET, None)
    assert m.source_updates == {} and m.fields[0].status is FieldStatus.UNCHANGED
    m = merge(p, {"n": "lots"}, {"n": 5}, None, ConflictPolicy.TARGET, None)
    assert m.source_updates == {"n": 5}
