"""Tryton models as crmsync objects: field types, the named defaults, values on the wire."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from crmsync.config.models import RefConfig, TrytonObjectConfig
from crmsync.model import FieldType, ObjectSpec

PARTY = "party.party"
OPPORTUNITY = "sale.opportunity"
ADDRESS = "party.address"
CONTACT = "party.contact_mechanism"
DEAL_STATES = ["opportunity", "converted", "won", "lost", "cancelled"]
CONTACT_TYPES = ("email", "phone", "mobile", "fax", "website")
# A party's kind: the names of its categories but the object's own (read only).
CATEGORY = "category"
ADDRESS_FIELDS = ("street", "postal_code", "city")

TYPES: dict[str, FieldType] = {
    "char": FieldType.STRING,
    "text": FieldType.STRING,
    "selection": FieldType.CHOICE,
    "integer": FieldType.INTEGER,
    "biginteger": FieldType.INTEGER,
    "float": FieldType.DECIMAL,
    "numeric": FieldType.DECIMAL,
    "boolean": FieldType.BOOLEAN,
    "date": FieldType.DATE,
    "datetime": FieldType.DATETIME,
    "timestamp": FieldType.DATETIME,
    "many2one": FieldType.REFERENCE,
    "one2many": FieldType.LIST,
    "many2many": FieldType.LIST,
}
# Internal or costly computed fields nobody maps: never read.
SKIP = {"xml_id", "create_uid", "write_uid", "create_date", "write_date"}


def defaults(name: str, cfg: TrytonObjectConfig, names: set[str]) -> dict[str, Any]:
    """The object's model, category, states and refs, with the named defaults filled in."""
    model = cfg.model
    category, states, refs = cfg.category, cfg.states, cfg.refs
    if name in ("company", "person") and model in (None, PARTY):
        model = PARTY
        category = category or name.capitalize()
    elif name in ("deal", "lead") and model in (None, OPPORTUNITY):
        model = OPPORTUNITY
        states = states or (["lead"] if name == "lead" else DEAL_STATES)
        if refs is None:
            refs = {}
            if "company" in names:
                refs["company"] = RefConfig(field="party", object="company")
            if "person" in names:
                refs["contact"] = RefConfig(field="contact", object="person")
    return {
        "model": model or name,
        "category": category,
        "states": states,
        "refs": refs or {},
    }


class TrytonObject:
    """One configured object: its model and narrowing, and what was learnt of it."""

    def __init__(self, name: str, model: str, category: str | None, states: list[str] | None,
                 refs: dict[str, RefConfig]) -> None:
        self.name = name
        self.model = model
        self.category = category
        self.category_id: int | None = None
        self.states = states
        self.refs = refs
        self.meta: dict[str, dict[str, Any]] | None = None  # fields_get
        self.spec: ObjectSpec | None = None
        self.own: list[str] = []  # own scalar fields read
        self.has_active = False

    @property
    def is_party(self) -> bool:
        return self.model == PARTY


def as_time(v: Any) -> datetime:
    """A ``last_modified_at`` as a datetime (Tryton's, or a cursor's ISO text)."""
    return v if isinstance(v, datetime) else datetime.fromisoformat(str(v))


class PersonId:
    """A person's party id standing where a contact mechanism id is written."""

    __slots__ = ("party",)

    def __init__(self, party: Any) -> None:
        self.party = int(party)


def wire(v: Any) -> Any:
    # Floats travel as Decimal so amounts keep their digits.
    if isinstance(v, float):
        return Decimal(str(v))
    return v
