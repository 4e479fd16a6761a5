"""The demo's sample data: real SQLite files, checked for what the demo promises."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from crmsync.config.models import Config, Direction
from crmsync.demo import sqlite as demo


def rows(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def one(path: Path, sql: str, params: tuple = ()) -> object:
    return rows(path, sql, params)[0][0]


@pytest.fixture
def dbs(tmp_path: Path) -> tuple[Path, Path]:
    erp, crm = tmp_path / "erp.db", tmp_path / "crm.db"
    demo.build_erp(erp, 5_000, seed=42)
    demo.build_crm(crm, erp, seed=42)
    return erp, crm


def test_erp_customers(dbs: tuple[Path, Path]) -> None:
    erp, _ = dbs
    assert one(erp, "SELECT count(*) FROM customers") == 5_000
    numbers = [r[0] for r in rows(erp, "SELECT customer_no FROM customers")]
    assert all(re.fullmatch(r"C\d{6}", n) for n in numbers)
    active = one(erp, "SELECT count(*) FROM customers WHERE contract_status = 'active'")
    assert 0.35 * 5_000 < active < 0.45 * 5_000
    assert {r[0] for r in rows(erp, "SELECT DISTINCT contract_status FROM customers")} == {
        "active",
        "none",
    }
    assert {r[0] for r in rows(erp, "SELECT DISTINCT status FROM customers")} == {"A", "I"}
    # Legacy rows without a timestamp: present, about 5%.
    unstamped = one(erp, "SELECT count(*) FROM customers WHERE changed_at IS NULL")
    assert 0.03 * 5_000 < unstamped < 0.07 * 5_000
    # Several rows share a timestamp (exercises the (changed_at, key) cursor).
    shared = one(
        erp,
        "SELECT count(*) FROM (SELECT changed_at FROM customers WHERE changed_at IS NOT NULL "
        "GROUP BY changed_at HAVING count(*) > 1)",
    )
    assert shared > 0
    # Timestamps in SQLAlchemy's SQLite format, so cursor comparisons are exact.
    stamp = one(erp, "SELECT changed_at FROM customers WHERE changed_at IS NOT NULL LIMIT 1")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", str(stamp))
    assert one(erp, "SELECT count(*) FROM customers WHERE credit_limit IS NULL") == 0
    indexes = rows(erp, "PRAGMA index_list(customers)")
    cols = [
        [c[2] for c in rows(erp, f"PRAGMA index_info({ix[1]})")]
        for ix in indexes
        if ix[1] == "ix_customers_changed"
    ]
    assert cols == [["changed_at", "customer_no"]]


def test_awkward_employee_values_reach_the_sync(dbs: tuple[Path, Path]) -> None:
    erp, _ = dbs
    values = [
        r[0]
        for r in rows(
            erp,
            "SELECT employees FROM customers WHERE contract_status = 'active' "
            "AND employees IS NOT NULL",
        )
    ]
    assert {v for v in values if not v.isdigit()} == set(demo.AWKWARD_EMPLOYEES)
    assert sum(v.isdigit() for v in values) > 0.9 * len(values)


def test_crm_companies_match_active_customers(dbs: tuple[Path, Path]) -> None:
    erp, crm = dbs
    assert one(crm, "SELECT count(*) FROM company") == 350
    active = {
        r[0]: r[1]
        for r in rows(
            erp, "SELECT customer_no, name FROM customers WHERE contract_status = 'active'"
        )
    }
    companies = rows(crm, "SELECT org_number, name FROM company WHERE org_number IS NOT NULL")
    matched = [(o, n) for o, n in companies if o in active]
    assert len(matched) == demo.MATCHED_COMPANIES
    assert all(name != active[o] for o, name in matched)  # stale names
    unrelated = [o for o, _ in companies if o not in active]
    assert unrelated and all(o.startswith("N") for o in unrelated)
    assert one(crm, "SELECT count(*) FROM company WHERE org_number IS NULL") > 0
    assert one(crm, "SELECT count(*) FROM company WHERE updated_at IS NULL") == 0


def test_deterministic(tmp_path: Path) -> None:
    def dump(seed: int, label: str) -> list[tuple]:
        erp, crm = tmp_path / f"erp{label}.db", tmp_path / f"crm{label}.db"
        demo.build_erp(erp, 1_000, seed)
        demo.build_crm(crm, erp, seed)
        return rows(erp, "SELECT * FROM customers ORDER BY 1") + rows(
            crm, "SELECT * FROM company ORDER BY 1"
        )

    assert dump(7, "a") == dump(7, "b")
    assert dump(7, "a") != dump(8, "c")


def test_rebuild_starts_from_scratch(tmp_path: Path) -> None:
    erp = tmp_path / "erp.db"
    demo.build_erp(erp, 1_000, 1)
    demo.build_erp(erp, 1_200, 1)
    assert one(erp, "SELECT count(*) FROM customers") == 1_200


def test_config_is_valid(tmp_path: Path) -> None:
    path = demo.write_config(tmp_path / "crmsync.yaml")
    cfg = Config.model_validate(YAML(typ="safe").load(path.read_text()))
    assert cfg.state == "sqlite:///crmsync.db"
    assert cfg.systems["erp"].url == "${ERP_DB_URL}"
    assert cfg.systems["crm"].url == "sqlite:///crm.db"
    customer = cfg.systems["erp"].objects["customer"]
    assert (customer.table, customer.key, customer.updated_at) == (
        "customers",
        "customer_no",
        "changed_at",
    )
    assert customer.deleted is not None
    assert (customer.deleted.field, customer.deleted.value) == ("status", "X")
    link = cfg.links["customers"]
    assert (link.source, link.target, link.match) == (
        "erp.customer",
        "crm.company",
        {"customer_no": "org_number"},
    )
    by_source = {m.source: m for m in link.fields}
    assert list(by_source) == [
        "name",
        "credit_limit",
        "status",
        "email",
        "phone",
        "city",
        "employees",
    ]
    assert by_source["status"].values == {"A": "Active", "I": "Inactive"}
    assert link.mapping_direction(by_source["email"]) is Direction.BOTH
    assert link.reads_target
    assert not isinstance(link.on_delete, str) and link.on_delete.set == {"status": "Deleted"}


def test_edit_erp(dbs: tuple[Path, Path]) -> None:
    erp, _ = dbs
    before = dict(rows(erp, "SELECT customer_no, name FROM customers"))
    newest_before = one(erp, "SELECT max(changed_at) FROM customers")
    edits = demo.edit_erp(erp)
    sizes = {k: len(v) for k, v in edits.items()}
    assert sizes == {"renamed": 20, "credit_changed": 10, "deleted": 3, "activated": 5}
    touched = [c for v in edits.values() for c in v]
    assert len(set(touched)) == len(touched)
    after = dict(rows(erp, "SELECT customer_no, name FROM customers"))
    assert {c for c in after if after[c] != before[c]} == set(edits["renamed"])
    marks = ",".join("?" * 3)
    assert one(
        erp, f"SELECT count(*) FROM customers WHERE status = 'X' AND customer_no IN ({marks})",
        tuple(edits["deleted"]),
    ) == 3
    assert one(erp, "SELECT count(*) FROM customers WHERE status = 'X'") == 3
    # Every edited row is stamped after everything the first sync saw.
    stamps = rows(
        erp,
        f"SELECT changed_at FROM customers WHERE customer_no IN ({','.join('?' * len(touched))})",
        tuple(touched),
    )
    assert all(s[0] > newest_before for s in stamps)


def test_edit_crm(dbs: tuple[Path, Path]) -> None:
    _, crm = dbs
    newest_before = one(crm, "SELECT max(updated_at) FROM company")
    skip = one(crm, "SELECT min(org_number) FROM company WHERE org_number LIKE 'C%'")
    edits = demo.edit_crm(crm, exclude={skip})
    assert len(edits) == 5 and skip not in edits
    for number, email in edits.items():
        email_now, stamp = rows(
            crm, "SELECT email, updated_at FROM company WHERE org_number = ?", (number,)
        )[0]
        assert email_now == email
        assert stamp > newest_before


def test_build_is_fast(tmp_path: Path) -> None:
    import time

    t0 = time.perf_counter()
    demo.build_erp(tmp_path / "erp.db", 5_000, 42)
    demo.build_crm(tmp_path / "crm.db", tmp_path / "erp.db", 42)
    # The brief's budget is 2 s; allow slack for a loaded CI machine.
    assert time.perf_counter() - t0 < 10
