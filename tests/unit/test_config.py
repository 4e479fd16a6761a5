from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from crmsync.config import (
    clear_secrets,
    config_schema,
    load_config,
    load_config_text,
    load_config_with_lines,
    redact,
    register_secret,
    safe_url,
)
from crmsync.config.models import SetAction
from crmsync.connectors.base import ChangePage, Connector, Cursor, WriteResult
from crmsync.engine.check import check_config
from crmsync.errors import ConfigError, SchemaError, SystemUnavailable
from crmsync.model import FieldSpec, FieldType, ObjectSpec, Record

CASES = Path(__file__).parent / "config_cases"
CANARY = "canary-Zq9xW7"
ENV = {"ERP_PASSWORD": CANARY}


@pytest.fixture(autouse=True)
def _fresh_secrets() -> Iterator[None]:
    clear_secrets()
    yield
    clear_secrets()


def problems_text(err: ConfigError) -> str:
    return "\n".join(f"{loc}: {msg}" for loc, msg in err.problems)


# -- golden files --------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(p.stem for p in CASES.glob("*.yaml")))
def test_golden(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CASES)
    with pytest.raises(ConfigError) as info:
        load_config(f"{case}.yaml", env=ENV)
    expected = (CASES / f"{case}.expected").read_text().rstrip("\n")
    assert problems_text(info.value) == expected
    assert CANARY not in str(info.value)


def test_every_golden_case_has_expected_file() -> None:
    for p in CASES.glob("*.yaml"):
        assert p.with_suffix(".expected").exists(), p.name


# -- loading -------------------------------------------------------------------

GOOD = """\
state: sqlite:///state.db
systems:
  erp:
    connector: sql
    url: postgresql://erp:${ERP_PASSWORD}@db.example/erp
    objects:
      customer:
        table: customers
        key: id
        updated_at: modified
        deleted: {field: active, value: false}
  crm:
    connector: sql
    url: sqlite:///crm.db
    objects:
      company: {table: company, key: id, updated_at: changed}
links:
  customers:
    source: erp.customer
    target: crm.company
    direction: both
    match: {customer_no: number}
    filter:
      all:
        - {field: active, op: is_true}
        - {field: since, op: ge, value: 2024-01-01}
    fields:
      - {source: name, target: name}
      - {source: email, target: email, direction: forward}
      - {source: status, target: stage, values: {1: Active, 2: Dormant}}
      - {source: note, target: comment, default: "$${NOT_A_VAR}"}
    on_delete: {set: {stage: Deleted}}
"""


def test_good_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "crmsync.yaml"
    path.write_text(GOOD)
    config, smap = load_config_with_lines(path, env=ENV)
    link = config.links["customers"]
    assert link.source_system == "erp" and link.target_object == "company"
    assert link.fields[2].values == {"1": "Active", "2": "Dormant"}
    assert link.fields[3].default == "${NOT_A_VAR}"  # $${ escapes
    assert isinstance(link.on_delete, SetAction)
    assert config.systems["erp"].url == f"postgresql://erp:{CANARY}@db.example/erp"
    assert (
        smap.locate("links.customers.fields[2].target")
        == f"{path}:30 links.customers.fields[2].target"
    )
    assert smap.locate("links.customers.fields[1].direction") == (
        f"{path}:29 links.customers.fields[1].direction"
    )
    assert smap.line("links.customers.match.customer_no") == 22


def test_missing_file_hints_dash_c(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "not found" in str(info.value)
    assert "-c FILE" in str(info.value)


def test_empty_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("", "c.yaml")
    assert info.value.problems == [("c.yaml:1", "the file is empty; expected systems: and links:")]


def test_problems_are_all_reported_and_sorted() -> None:
    text = GOOD.replace("direction: both", "direction: up").replace(
        "key: id\n        updated_at: modified", "key: id\n        lookback: -5"
    )
    text = text.replace("${ERP_PASSWORD}", "${MISSING_PW}")
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "c.yaml", env={})
    lines = [int(loc.split(":")[1].split()[0]) for loc, _ in info.value.problems]
    assert lines == sorted(lines)
    messages = problems_text(info.value)
    assert "c.yaml:5 systems.erp.url: environment variable 'MISSING_PW' is not set" in messages
    assert "systems.erp.objects.customer.lookback: expected a number >= 0, got -5" in messages
    assert "links.customers.direction: expected one of forward, both; got 'up'" in messages


def test_bad_filter_value_shape_reports_once() -> None:
    text = GOOD.replace("{field: active, op: is_true}", "{field: active, opp: is_true}")
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "c.yaml", env=ENV)
    assert info.value.problems == [
        (
            "c.yaml:25 links.customers.filter.all[0].opp",
            "unknown key 'opp' (expected one of: field, op, value)",
        )
    ]


def test_config_schema_is_json_schema() -> None:
    schema = config_schema()
    assert schema["type"] == "object"
    assert {"systems", "links", "state"} <= set(schema["properties"])


# -- secrets -------------------------------------------------------------------


def test_canary_secret_never_leaks() -> None:
    # The secret lands in a field of the wrong type: the message must not show it.
    text = GOOD.replace("batch_size", "x").replace(
        "    on_delete: {set: {stage: Deleted}}",
        "    on_delete: {set: {stage: Deleted}}\n    batch_size: ${ERP_PASSWORD}",
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "c.yaml", env=ENV)
    assert CANARY not in str(info.value)
    assert CANARY not in repr(info.value.problems)
    assert "got '***'" in str(info.value)


def test_redact_hides_secret_in_config_repr() -> None:
    config, _ = load_config_text(GOOD, "c.yaml", env=ENV)
    assert CANARY in repr(config)  # a plain str field; redact is what output goes through
    assert CANARY not in redact(repr(config))
    assert CANARY not in redact(str(config.model_dump()))


def test_redact_url_passwords_and_registered_values() -> None:
    assert safe_url("postgresql://u:p%40ss@host:5432/db") == "postgresql://u:***@host:5432/db"
    assert safe_url("mysql+pymysql://root@127.0.0.1/test") == "mysql+pymysql://root@127.0.0.1/test"
    assert (
        redact("connect to postgres://a:b@c/d failed") == "connect to postgres://a:***@c/d failed"
    )
    register_secret("tok-123456")
    assert redact("bearer tok-123456 rejected") == "bearer *** rejected"
    register_secret("ab")  # too short to be a secret: would mask ordinary text
    assert redact("abc") == "abc"


# -- live check ------------------------------------------------------------------


class DescribedConnector(Connector):
    """Implements the description part of the interface from fixed ObjectSpecs."""

    def __init__(self, name: str, specs: dict[str, ObjectSpec | Exception]) -> None:
        super().__init__(name)
        self.specs = specs

    def objects(self) -> list[str]:
        return list(self.specs)

    def describe(self, obj: str) -> ObjectSpec:
        spec = self.specs[obj]
        if isinstance(spec, Exception):
            raise spec
        return spec

    def read_changes(
        self, obj: str, cursor: Cursor | None, limit: int, lookback: float = 0.0
    ) -> ChangePage:
        raise NotImplementedError

    def start_cursor(self, obj: str) -> Cursor | None:
        raise NotImplementedError

    def scan(self, obj: str, after_id: str | None, limit: int) -> list[Record]:
        raise NotImplementedError

    def read(self, obj: str, ids: Sequence[str]) -> dict[str, Record]:
        raise NotImplementedError

    def find(self, obj: str, field_name: str, values: Sequence[Any]) -> list[Record]:
        raise NotImplementedError

    def write(
        self, obj: str, creates: Any = (), updates: Any = (), deletes: Any = ()
    ) -> WriteResult:
        raise NotImplementedError


def spec(name: str, *fields: FieldSpec, key: str = "id", generated: bool = True) -> ObjectSpec:
    all_fields = {f.name: f for f in fields}
    all_fields.setdefault(key, FieldSpec(key, FieldType.INTEGER, nullable=False, read_only=True))
    return ObjectSpec(name, key, all_fields, key_generated=generated)


S, INT, B, DT = FieldType.STRING, FieldType.INTEGER, FieldType.BOOLEAN, FieldType.DATE

CUSTOMER = spec(
    "customer",
    FieldSpec("customer_no", INT),
    FieldSpec("name", S),
    FieldSpec("email", S),
    FieldSpec("status", INT),
    FieldSpec("note", S),
    FieldSpec("active", B),
    FieldSpec("since", DT),
    FieldSpec("modified", FieldType.DATETIME),
)
COMPANY = spec(
    "company",
    FieldSpec("number", INT),
    FieldSpec("name", S, max_length=80),
    FieldSpec("email", S),
    FieldSpec("stage", FieldType.CHOICE, choices=("Active", "Dormant", "Deleted")),
    FieldSpec("comment", S),
    FieldSpec("changed", FieldType.DATETIME),
)


def connectors(
    customer: ObjectSpec | Exception = CUSTOMER, company: ObjectSpec | Exception = COMPANY
) -> dict[str, Connector]:
    return {
        "erp": DescribedConnector("erp", {"customer": customer}),
        "crm": DescribedConnector("crm", {"company": company}),
    }


def check(text: str, **kw: ObjectSpec | Exception) -> list[tuple[str, str]]:
    config, smap = load_config_text(text, "c.yaml", env=ENV)
    return check_config(config, connectors(**kw), "c.yaml", smap.locate)


def test_check_good_config_has_no_problems() -> None:
    assert check(GOOD) == []


def test_check_reports_every_live_problem_with_lines() -> None:
    text = (
        GOOD.replace(
            "{source: email, target: email, direction: forward}",
            "{source: email, target: emial, direction: forward}",
        )
        .replace("{source: name, target: name}", "{source: since, target: number}")
        .replace("values: {1: Active, 2: Dormant}", "values: {1: Active, 2: Asleep}")
        .replace("op: ge, value: 2024-01-01", "op: ge, value: yesterday")
        .replace("match: {customer_no: number}", "match: {customer_no: numbr}")
        .replace("{set: {stage: Deleted}}", "{set: {stage: Deleted, gone: true}}")
        .replace("deleted: {field: active, value: false}", "deleted: {field: state}")
    )
    problems = check(text)
    fields_text = "number, name, email, stage, comment, changed, id"
    assert problems == [
        (
            "c.yaml:11 systems.erp.objects.customer.deleted.field",
            "field 'state' not found on erp.customer (fields: customer_no, name, email, status, "
            "note, active, since, modified, id)",
        ),
        (
            "c.yaml:22 links.customers.match.customer_no",
            f"target field 'numbr' not found on crm.company (fields: {fields_text})",
        ),
        (
            "c.yaml:26 links.customers.filter.all[1].value",
            "expected a date (YYYY-MM-DD), got 'yesterday'",
        ),
        (
            "c.yaml:28 links.customers.fields[0]",
            "cannot map date field 'since' to integer field 'number': "
            "a date cannot be written to an integer field",
        ),
        (
            "c.yaml:29 links.customers.fields[1].target",
            f"field 'emial' not found on crm.company (fields: {fields_text})",
        ),
        (
            "c.yaml:30 links.customers.fields[2].values['2']",
            "expected one of Active, Dormant, Deleted, got 'Asleep' (field 'stage' is choice)",
        ),
        (
            "c.yaml:32 links.customers.on_delete.set.gone",
            f"field 'gone' not found on crm.company (fields: {fields_text})",
        ),
    ]


def test_check_backward_mapping_onto_generated_key_is_refused() -> None:
    text = GOOD.replace("{source: name, target: name}", "{source: id, target: number}")
    problems = check(text)
    assert problems == [
        (
            "c.yaml:28 links.customers.fields[0].source",
            "'id' is the key erp.customer generates itself; it cannot be written "
            "(backward mapping)",
        )
    ]


def test_check_schema_error_and_unreachable_system() -> None:
    problems = check(
        GOOD,
        customer=SchemaError("updated_at", "column 'modified' not found in table customers"),
        company=SystemUnavailable("connection refused to sqlite://u:hunter22@x/y"),
    )
    assert problems == [
        (
            "c.yaml:10 systems.erp.objects.customer.updated_at",
            "column 'modified' not found in table customers",
        ),
        ("c.yaml:14 systems.crm.url", "cannot reach crm: connection refused to sqlite://u:***@x/y"),
    ]


def test_check_value_map_needs_scalar_fields_and_newest_needs_updated_at() -> None:
    tags = FieldSpec("tags", FieldType.LIST)
    company = spec("company", *COMPANY.fields.values(), tags)
    text = (
        GOOD.replace("target: stage, values", "target: tags, values")
        .replace("direction: both", "direction: both\n    conflict: newest")
        .replace("{table: company, key: id, updated_at: changed}", "{table: company, key: id}")
    )
    problems = check(text, company=company)
    assert problems == [
        (  # a two-way link captures its target too
            "c.yaml:16 systems.crm.objects.company",
            "links.customers captures the changes of its target crm.company: give the object "
            "`updated_at: COLUMN`, a column stamped on every change",
        ),
        (
            "c.yaml:22 links.customers.conflict",
            "conflict: newest needs updated_at on the target object crm.company",
        ),
        (
            "c.yaml:31 links.customers.fields[2].values",
            "value maps apply only to scalar fields; 'tags' is list",
        ),
    ]


def test_check_anonymize_fields_exist_and_replacements_fit() -> None:
    text = GOOD.replace(
        "        deleted: {field: active, value: false}\n",
        "        deleted: {field: active, value: false}\n"
        "        anonymize: {name: Erased, emial: x, status: unknown, id: 0, note: null}\n",
    )
    problems = check(text)
    assert problems == [
        (
            "c.yaml:12 systems.erp.objects.customer.anonymize.emial",
            "field 'emial' not found on erp.customer (fields: customer_no, name, email, status, "
            "note, active, since, modified, id)",
        ),
        (
            "c.yaml:12 systems.erp.objects.customer.anonymize.status",
            "expected a number, got 'unknown' (field 'status' is integer)",
        ),
        (
            "c.yaml:12 systems.erp.objects.customer.anonymize.id",
            "'id' is the key of erp.customer; anonymize cannot replace it",
        ),
    ]
    good = text.replace("emial: x, status: unknown, id: 0, ", "email: erased@example.invalid, ")
    assert check(good) == []
