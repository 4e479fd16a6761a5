"""Apply's decide step, pure: plain gathered data in, decisions out (no database,
no system)."""

from __future__ import annotations

from typing import Any

from crmsync.config.models import LinkConfig, ObjectConfig
from crmsync.engine.decide import (
    REFUSED_KEY,
    Decisions,
    Gathered,
    Pending,
    apply_refusals,
    decide,
)
from crmsync.engine.link import CompiledLink, compile_link
from crmsync.model import (
    Action,
    FieldSpec,
    FieldStatus,
    FieldType,
    ObjectSpec,
    Record,
    applied_version,
)
from crmsync.state.store import Identity


def _spec(name: str, *fields: str) -> ObjectSpec:
    return ObjectSpec(
        name,
        "id",
        {f: FieldSpec(f, FieldType.STRING) for f in ("id", *fields)},
    )


SOURCE = _spec("company", "name", "email", "status", "gone")
TARGET = _spec("party", "name", "email", "active", "person", "person.name")


def link(**over: Any) -> CompiledLink:
    cfg: dict[str, Any] = {
        "source": "crm.company",
        "target": "erp.party",
        "fields": [{"source": "name", "target": "name"}],
        "match": {"email": "email"},
    } | over
    return compile_link(
        "companies",
        LinkConfig.model_validate(cfg),
        SOURCE,
        TARGET,
        ObjectConfig(table="company", key="id", deleted={"field": "gone", "value": "yes"}),
    )


def ident(sid: str, tid: str | None, shadow: dict[str, Any], **kw: Any) -> Identity:
    return Identity(
        sid, tid, shadow, kw.get("sv"), kw.get("tv"), kw.get("deleted", False)
    )


def only(d: Decisions) -> Pending:
    assert len(d.pending) == 1
    return d.pending[0]


def test_a_new_record_is_created_with_its_match_key() -> None:
    g = Gathered({"1": None}, {"1": Record("1", {"name": "Acme", "email": "a@x"}, 7)})
    d = decide(link(), g)
    p = only(d)
    assert p.outcome.action is Action.CREATED and p.create_index == 0
    assert d.creates == [{"name": "Acme", "email": "a@x"}]
    assert p.shadow == {"name": "Acme"}
    # the stamp and a digest of the values read: what capture compares it with
    assert p.source_version == applied_version(g.records["1"])
    assert p.source_version.startswith("7#")
    assert not d.target_updates and not d.target_deletes and not d.source_updates


def test_no_create_when_the_link_does_not_create() -> None:
    g = Gathered({"1": None}, {"1": Record("1", {"name": "Acme"})})
    p = only(decide(link(create=False), g))
    assert p.outcome.action is Action.SKIPPED and not p.save_identity
    assert p.outcome.message == "no matching target record, and the link does not create"


def test_an_ambiguous_match_is_rejected_not_created() -> None:
    g = Gathered(
        {"1": None}, {"1": Record("1", {"name": "Acme"})}, ambiguous={"1": "ambiguous match"}
    )
    d = decide(link(), g)
    assert only(d).outcome.action is Action.REJECTED and not d.creates


def test_a_first_pairing_is_matched_and_writes_what_differs() -> None:
    g = Gathered(
        {"1": None},
        {"1": Record("1", {"name": "Acme", "email": "a@x"})},
        targets={"t9": Record("t9", {"name": "ACME", "email": "a@x"})},
        matched={"1": "t9"},
    )
    d = decide(link(), g)
    p = only(d)
    assert p.outcome.action is Action.MATCHED and p.outcome.matched and p.target_id == "t9"
    assert d.target_updates == [("t9", {"name": "Acme"})] and p.target_write


def test_a_match_gone_while_pairing_is_skipped() -> None:
    g = Gathered({"1": None}, {"1": Record("1", {"name": "Acme"})}, matched={"1": "t9"})
    p = only(decide(link(), g))
    assert p.outcome.action is Action.SKIPPED
    assert p.outcome.message == "the matching target record t9 disappeared while pairing"


def test_a_paired_record_is_updated_then_unchanged() -> None:
    lk = link()
    g = Gathered(
        {"1": ident("1", "t9", {"name": "Old"})},
        {"1": Record("1", {"name": "New"})},
        targets={"t9": Record("t9", {"name": "Old"})},
    )
    d = decide(lk, g)
    assert only(d).outcome.action is Action.UPDATED
    assert d.target_updates == [("t9", {"name": "New"})]
    # Both sides agree with the shadow: nothing written, state not touched.
    g = Gathered(
        {"1": ident("1", "t9", {"name": "New"})},
        {"1": Record("1", {"name": "New"})},
        targets={"t9": Record("t9", {"name": "New"})},
    )
    d = decide(lk, g)
    p = only(d)
    assert p.outcome.action is Action.UNCHANGED and not p.save_identity
    assert not d.target_updates


def test_a_paired_target_gone_is_not_recreated() -> None:
    g = Gathered({"1": ident("1", "t9", {"name": "A"})}, {"1": Record("1", {"name": "A"})})
    p = only(decide(link(), g))
    assert p.outcome.action is Action.SKIPPED and not p.save_identity
    assert p.outcome.message == "the target record no longer exists; not re-created"


def test_deletes_follow_on_delete() -> None:
    paired = {"1": ident("1", "t9", {"name": "A"})}
    d = decide(link(on_delete="delete"), Gathered(paired, {}))
    p = only(d)
    assert p.outcome.action is Action.DELETED and p.deleted and d.target_deletes == ["t9"]

    p = only(decide(link(), Gathered(paired, {})))  # on_delete: ignore
    assert p.outcome.action is Action.SKIPPED and p.deleted and p.save_identity

    d = decide(
        link(on_delete={"set": {"active": "no"}}),
        Gathered(paired, {"1": Record("1", {"name": "A", "gone": "yes"})}),
    )
    p = only(d)
    assert p.outcome.action is Action.DELETED and p.target_write
    assert d.target_updates == [("t9", {"active": "no"})] and p.shadow == {
        "name": "A",
        "active": "no",
    }

    p = only(decide(link(), Gathered({"2": None}, {})))
    assert p.outcome.action is Action.SKIPPED and not p.save_identity
    assert p.outcome.message == "not found at the source and never synced: nothing to do"

    done = {"1": ident("1", "t9", {"name": "A"}, deleted=True)}
    p = only(decide(link(on_delete="delete"), Gathered(done, {})))
    assert p.outcome.action is Action.UNCHANGED and p.outcome.quiet


def test_filtered_and_waiting_records_are_left_alone() -> None:
    lk = link(filter={"field": "status", "op": "eq", "value": "active"})
    g = Gathered(
        {"1": None},
        {"1": Record("1", {"name": "A", "status": "lead"}), "2": Record("2", {"name": "B"})},
        waiting={"2": ident("2", "t2", {})},
    )
    d = decide(lk, g)
    assert [(p.source_id, p.outcome.action) for p in d.pending] == [
        ("2", Action.WAITING),
        ("1", Action.FILTERED),
    ]
    assert d.pending[0].outcome.target_id == "t2"
    assert not any(p.save_identity for p in d.pending) and not d.creates


def test_a_write_through_an_erased_related_record_is_held() -> None:
    lk = link(fields=[{"source": "name", "target": "person.name"}])
    g = Gathered(
        {"1": ident("1", "t9", {"person.name": "Old"})},
        {"1": Record("1", {"name": "New"})},
        targets={"t9": Record("t9", {"person.name": "Old", "person": 5})},
        erased_related={"erp.person:5"},
    )
    d = decide(lk, g, refs={"person": "person"}, target_system="erp")
    f = only(d).outcome.fields[0]
    assert f.status is FieldStatus.REJECTED
    assert f.reason == "the related record erp.person:5 was erased (GDPR)"
    assert not d.target_updates


def test_a_refused_value_is_rejected_then_not_sent_again() -> None:
    lk = link()
    base = {"name": "Old"}
    g = Gathered(
        {"1": ident("1", "t9", base)},
        {"1": Record("1", {"name": "Bad"})},
        targets={"t9": Record("t9", {"name": "Old"})},
    )
    p = only(decide(lk, g))
    # The target refused the value at write time.
    apply_refusals(
        p, {"name": "too long"}, {}, key_of={"name": "name"},
        systems={"target": "erp", "source": "crm"},
    )
    f = p.outcome.fields[0]
    assert (f.status, f.reason) == (FieldStatus.REJECTED, "refused by erp: too long")
    assert p.outcome.action is Action.REJECTED
    assert p.shadow is not None and p.shadow["name"] == "Old"
    assert p.shadow[REFUSED_KEY] == {"target": {"name": "Bad"}}
    # Read again unchanged: the refused value is held back, and the pass is quiet.
    g = Gathered(
        {"1": ident("1", "t9", p.shadow)},
        {"1": Record("1", {"name": "Bad"})},
        targets={"t9": Record("t9", {"name": "Old"})},
    )
    d = decide(lk, g)
    p2 = only(d)
    assert not d.target_updates and p2.outcome.quiet
    assert p2.outcome.fields[0].reason == "refused by erp: too long"
