"""TrytonConnector against a real trytond 8.2: objects, child fields, capture, writes."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest
from trytonenv import TrytonServer

from crmsync.config.models import TrytonSystemConfig
from crmsync.connectors.tryton import TrytonConnector
from crmsync.errors import SchemaError, SystemUnavailable
from crmsync.model import FieldType


def connector(tryton: TrytonServer, **objects: Any) -> TrytonConnector:
    cfg = TrytonSystemConfig(
        connector="tryton",
        url=tryton.url,
        database=tryton.database,
        user=tryton.user,
        password=tryton.password,
        objects=objects or {"company": {}, "person": {}, "deal": {}},
        timeout=10,
    )
    return TrytonConnector("crm", cfg)


def picked(values: dict[str, Any], *names: str) -> dict[str, Any]:
    return {n: values.get(n) for n in names}


def test_fields_come_from_fields_get_with_children_as_plain_fields(tryton: TrytonServer) -> None:
    c = connector(tryton)
    company = c.describe("company")
    assert company.fields["name"].type is FieldType.STRING
    assert company.fields["active"].type is FieldType.BOOLEAN
    for f in ("email", "phone", "street", "city", "postal_code"):
        assert company.fields[f].type is FieldType.STRING and not company.fields[f].read_only
    deal = c.describe("deal")
    assert deal.fields["amount"].type is FieldType.DECIMAL
    assert deal.fields["state"].type is FieldType.CHOICE
    assert deal.fields["company.city"].type is FieldType.STRING
    assert deal.fields["contact.email"].type is FieldType.STRING
    # The ref shadows the model's own `company` (the selling company).
    assert deal.fields["company"].read_only
    with pytest.raises(SchemaError, match="category 'Vendor' does not exist"):
        connector(tryton, vendor={"model": "party.party", "category": "Vendor"}).describe("vendor")


def test_create_update_and_clear_through_child_models(tryton: TrytonServer) -> None:
    c = connector(tryton)
    res = c.write(
        "company",
        creates=[
            {"name": "Acme", "email": "a@acme.test", "street": "1 Main", "city": "Springfield"},
            {"name": "Beta", "phone": "555-0100"},
        ],
    )
    assert res.errors == {} and None not in res.created
    acme, beta = res.created
    got = c.read("company", [acme, beta])
    assert picked(got[acme].values, "name", "email", "phone", "street", "city") == {
        "name": "Acme", "email": "a@acme.test", "phone": None,
        "street": "1 Main", "city": "Springfield",
    }
    assert picked(got[beta].values, "phone", "email", "city") == {
        "phone": "555-0100", "email": None, "city": None,
    }
    # A company is not a person: the category tells them apart.
    assert c.read("person", [acme]) == {}
    res = c.write(
        "company",
        updates=[
            (acme, {"email": "new@acme.test", "city": "Shelbyville"}),
            (beta, {"phone": None, "name": "Beta Ltd", "city": "Ogdenville"}),
        ],
    )
    assert res.errors == {}
    got = c.read("company", [acme, beta])
    assert picked(got[acme].values, "email", "city", "street") == {
        "email": "new@acme.test", "city": "Shelbyville", "street": "1 Main",
    }
    assert picked(got[beta].values, "name", "phone", "city") == {
        "name": "Beta Ltd", "phone": None, "city": "Ogdenville",
    }
    assert [r.id for r in c.find("company", "email", ["new@acme.test"])] == [acme]
    # Batched: one create call and one write call per model, not one per record.
    before = c.count_calls()
    ups = [(acme, {"name": "Acme 2"}), (beta, {"name": "Beta 2"})]
    assert c.write("company", updates=ups).errors == {}
    assert c.count_calls() - before == 1


def test_a_refused_value_fails_only_its_record(tryton: TrytonServer) -> None:
    c = connector(tryton)
    a, b = c.write("company", creates=[{"name": "A"}, {"name": "B"}]).created
    assert a and b
    res = c.write("company", updates=[(a, {"code": "X-1"}), (b, {"name": "B2"})])
    assert set(res.errors) == {a}
    assert "Code" in res.errors[a], res.errors
    assert c.read("company", [b])[b].values["name"] == "B2"


def test_changes_include_children_and_archives(tryton: TrytonServer) -> None:
    c = connector(tryton)
    cur = c.start_cursor("company")
    a, b = c.write("company", creates=[{"name": "A", "email": "a@x.test"}, {"name": "B"}]).created
    assert a and b
    page = c.read_changes("company", cur, 100, 5.0)
    assert {r.id for r in page.records} == {a, b}
    cur = page.cursor
    time.sleep(0.05)
    # An email edit touches only the contact mechanism, not the party's stamp.
    rpc = tryton.rpc()
    [cm] = rpc.call("model.party.contact_mechanism.search", [["party", "=", int(a)]], 0, None, None)
    rpc.call("model.party.contact_mechanism.write", [cm], {"value": "a2@x.test"})
    page = c.read_changes("company", cur, 100, 0.0)
    assert [r.id for r in page.records] == [a]
    assert page.records[0].values["email"] == "a2@x.test"
    cur = page.cursor
    # Archive: seen as a change, absent from read (so the engine takes it as deleted).
    rpc.call("model.party.party.write", [int(b)], {"active": False})
    page = c.read_changes("company", cur, 100, 0.0)
    assert [(r.id, r.values["active"]) for r in page.records] == [(b, False)]
    assert c.read("company", [b]) == {}
    assert c.count("company") == 1


def test_deal_refs_update_related_company_and_person_and_notes(tryton: TrytonServer) -> None:
    c = connector(tryton)
    [company] = c.write("company", creates=[{"name": "Acme", "city": "Old"}]).created
    [person] = c.write("person", creates=[{"name": "Pat", "email": "pat@x.test"}]).created
    assert company and person
    rpc = tryton.rpc()
    # Refs are written as the related record's id (the person, not its email).
    [deal] = c.write(
        "deal", creates=[{"description": "Big deal", "company": company, "contact": person}]
    ).created
    assert deal
    got = c.read("deal", [deal])[deal].values
    assert got["state"] == "opportunity"
    assert picked(got, "company", "contact", "company.city", "contact.email") == {
        "company": int(company), "contact": int(person),
        "company.city": "Old", "contact.email": "pat@x.test",
    }
    res = c.write(
        "deal",
        updates=[(deal, {"amount": Decimal("1234.50"), "company.city": "Capital",
                         "contact.email": "pat@new.test"})],
    )
    assert res.errors == {}
    got = c.read("deal", [deal])[deal].values
    assert got["amount"] == Decimal("1234.50")
    assert c.read("company", [company])[company].values["city"] == "Capital"
    assert c.read("person", [person])[person].values["email"] == "pat@new.test"
    assert c.related_ids("deal", deal) == {"company": ("company", company),
                                           "contact": ("person", person)}
    c.add_activities("deal", [(deal, "Sync completed")])
    notes = rpc.call("model.ir.note.search_read", [], 0, None, None, ["resource", "message"])
    assert [(n["resource"], n["message"]) for n in notes] == [
        (f"sale.opportunity,{deal}", "Sync completed")
    ]


def test_a_stopped_server_is_unavailable_not_an_error(tryton: TrytonServer) -> None:
    c = connector(tryton)
    c.describe("company")
    tryton.stop()
    with pytest.raises(SystemUnavailable):
        c.write("company", creates=[{"name": "Nobody"}])
    tryton.start()
    assert c.write("company", creates=[{"name": "Somebody"}]).errors == {}


def test_hard_deletes_are_flagged_from_the_model_log(tryton: TrytonServer) -> None:
    c = connector(tryton)
    a, b, keep = c.write("company", creates=[{"name": "A"}, {"name": "B"}, {"name": "C"}]).created
    assert a and b and keep
    cur = c.start_cursor("company")
    page = c.read_changes("company", cur, 100, 0.0)
    assert not page.check_known
    # Deleting another model's record is no news for companies.
    rpc = tryton.rpc()
    [other] = rpc.call("model.party.category.create", [{"name": "Temp"}])
    rpc.call("model.party.category.delete", [other])
    page = c.read_changes("company", page.cursor, 100, 0.0)
    assert not page.check_known
    c.write("company", deletes=[a])
    rpc.call("model.party.party.write", [int(b)], {"active": False})
    page = c.read_changes("company", page.cursor, 100, 0.0)
    assert page.check_known
    assert c.existing("company", [a, b, keep]) == {keep}
    # Seen once: the next poll is quiet again.
    assert not c.read_changes("company", page.cursor, 100, 0.0).check_known
