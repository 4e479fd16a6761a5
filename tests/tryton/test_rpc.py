"""TrytonRPC against a real trytond 8.2 (one fresh server per test)."""

from __future__ import annotations

import os
import signal
import threading
import time as time_mod
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest
from trytonenv import TrytonServer

from crmsync.connectors.tryton import TrytonError, TrytonRPC, dumps, loads
from crmsync.errors import SystemUnavailable

PARTY = "model.party.party."


def test_typed_values_round_trip_through_json() -> None:
    values = {
        "dt": datetime(2026, 3, 4, 5, 6, 7, 890123),
        "d": date(2026, 3, 4),
        "t": time(13, 14, 15, 16),
        "td": timedelta(hours=1, seconds=2),
        "dec": Decimal("12.30"),
        "raw": b"\x00\xffbin",
        "nested": [{"amount": Decimal("-1.5")}, [date(2000, 1, 1)]],
    }
    assert loads(dumps(values)) == values
    # Tryton stores naive UTC: aware datetimes are converted before sending.
    aware = datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert loads(dumps(aware)) == datetime(2026, 1, 1, 10, 0)


def test_login_version_and_context(tryton: TrytonServer) -> None:
    rpc = tryton.rpc()
    assert rpc.call("common.server.version") == "8.2"
    assert rpc.uid == tryton.user_id
    assert rpc.login_count == 1
    assert rpc.context["company"] == tryton.company_id
    assert rpc.context["employee"] == tryton.employee_id
    # login + get_preferences + version
    assert rpc.count_calls() == 3
    for text in (repr(rpc), str(rpc.__dict__.get("_session"))):
        assert tryton.password not in text


def test_party_with_email_and_address_in_one_call(tryton: TrytonServer) -> None:
    rpc = tryton.rpc()
    before = rpc.count_calls()
    [party] = rpc.call(
        PARTY + "create",
        [
            {
                "name": "Acme Corp",
                "categories": [["add", [tryton.category_company_id]]],
                "contact_mechanisms": [["create", [{"type": "email", "value": "hi@acme.test"}]]],
                "addresses": [["create", [{"street": "1 Main St", "city": "Springfield"}]]],
            }
        ],
    )
    assert rpc.count_calls() == before + 1
    [row] = rpc.call(
        PARTY + "read",
        [party],
        [
            "name",
            "categories",
            "contact_mechanisms.type",
            "contact_mechanisms.value",
            "addresses.city",
        ],
    )
    assert row["name"] == "Acme Corp"
    assert row["categories"] == [tryton.category_company_id]
    assert [(c["type"], c["value"]) for c in row["contact_mechanisms."]] == [
        ("email", "hi@acme.test")
    ]
    assert [a["city"] for a in row["addresses."]] == ["Springfield"]


def test_opportunity_decimal_date_datetime_bytes(tryton: TrytonServer) -> None:
    rpc = tryton.rpc()
    t0 = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=5)
    [party] = rpc.call(PARTY + "create", [{"name": "Buyer Ltd"}])
    [opp] = rpc.call(
        "model.sale.opportunity.create",
        [
            {
                "description": "Big deal",
                "party": party,
                "employee": tryton.employee_id,
                "amount": Decimal("1234.56"),
                "start_date": date(2026, 2, 3),
            }
        ],
    )
    rpc.call("model.sale.opportunity.opportunity", [opp])  # lead -> opportunity
    [row] = rpc.call(
        "model.sale.opportunity.read",
        [opp],
        ["amount", "start_date", "state", "currency", "company", "create_date"],
    )
    assert row["amount"] == Decimal("1234.56") and isinstance(row["amount"], Decimal)
    assert row["start_date"] == date(2026, 2, 3)
    assert row["state"] == "opportunity"
    assert row["currency"] == tryton.currency_id
    assert row["company"] == tryton.company_id
    assert isinstance(row["create_date"], datetime) and row["create_date"] > t0
    # A datetime in a domain goes out typed, too.
    found = rpc.call(
        "model.sale.opportunity.search", [["create_date", ">=", row["create_date"]]], 0, None, None
    )
    assert found == [opp]
    # bytes: an attachment's data comes back as the same bytes.
    blob = bytes(range(256))
    [att] = rpc.call(
        "model.ir.attachment.create",
        [{"name": "x.bin", "resource": f"sale.opportunity,{opp}", "data": blob}],
    )
    assert rpc.call("model.ir.attachment.read", [att], ["data"])[0]["data"] == blob


def test_last_modified_at_ordering(tryton: TrytonServer) -> None:
    rpc = tryton.rpc()
    [(since,)] = [
        (r["last_modified_at"],)
        for r in rpc.call(PARTY + "read", [tryton.employee_party_id], ["last_modified_at"])
    ]
    a, b, c = (rpc.call(PARTY + "create", [{"name": n}])[0] for n in ("A", "B", "C"))
    rpc.call(PARTY + "write", [a], {"name": "A2"})
    rows = rpc.call(
        PARTY + "search_read",
        [["last_modified_at", ">", since]],
        0,
        None,
        [["last_modified_at", "ASC"], ["id", "ASC"]],
        ["name", "last_modified_at", "create_date", "write_date"],
    )
    assert [r["id"] for r in rows] == [b, c, a]
    stamps = [r["last_modified_at"] for r in rows]
    assert stamps == sorted(stamps)
    # party.party fills write_date on create (= create_date, same transaction).
    assert rows[0]["write_date"] == rows[0]["create_date"]


def test_archive_hides_from_default_search(tryton: TrytonServer) -> None:
    rpc = tryton.rpc()
    [p] = rpc.call(PARTY + "create", [{"name": "Old Client"}])
    rpc.call(PARTY + "write", [p], {"active": False})
    name = [["name", "=", "Old Client"]]
    assert rpc.call(PARTY + "search", name, 0, None, None) == []
    every = [*name, ["active", "in", [True, False]]]
    [row] = rpc.call(PARTY + "search_read", every, 0, None, None, ["active"])
    # SQLite hands booleans back as 0/1.
    assert row["id"] == p and not row["active"]


def test_errors_are_readable_and_secret_free(tryton: TrytonServer) -> None:
    rpc = tryton.rpc()
    with pytest.raises(TrytonError) as missing:
        rpc.call(PARTY + "read", [999999], ["name"])
    assert missing.value.kind == "UserError"
    assert "999999" in str(missing.value) and "don't exist" in str(missing.value)

    with pytest.raises(TrytonError) as forbidden:
        rpc.call("model.party.relation.read", [1], ["id"])  # not exposed over RPC
    assert forbidden.value.kind == "Forbidden"

    with pytest.raises(TrytonError) as unknown:
        rpc.call(PARTY + "create", [{"name": "x", "no_such_field": 1}])
    assert unknown.value.kind == "ServerError" and "no_such_field" in str(unknown.value)

    # Optimistic locking with a stale timestamp passed as extra context.
    [p] = rpc.call(PARTY + "create", [{"name": "Locked"}])
    with pytest.raises(TrytonError) as stale:
        rpc.call(
            PARTY + "write",
            [p],
            {"name": "L2"},
            context={"_timestamp": {f"party.party,{p}": "2000-01-01 00:00:00.000000"}},
        )
    assert stale.value.kind == "ConcurrencyException"
    assert rpc.call(PARTY + "read", [p], ["name"])[0]["name"] == "Locked"

    bad = TrytonRPC(tryton.url, tryton.database, tryton.user, "wrong-" + tryton.password)
    with pytest.raises(TrytonError) as refused:
        bad.call(PARTY + "search", [], 0, 1, None)
    bad.close()
    assert refused.value.kind == "LoginError"

    token = rpc.__dict__["_session"].header.split()[1]
    for exc in (missing, forbidden, unknown, stale, refused):
        for text in (str(exc.value), repr(exc.value), exc.value.description):
            assert tryton.password not in text and token not in text


def test_session_renewed_after_logout(tryton: TrytonServer) -> None:
    rpc = tryton.rpc()
    old_header = rpc.__dict__["_session"].header
    rpc.call("common.db.logout")  # the server forgets the session: next call gets HTTP 401
    assert rpc.call(PARTY + "search_count", []) >= 2
    assert rpc.login_count == 2
    assert rpc.__dict__["_session"].header != old_header
    # Every request counted: login, prefs, logout, rejected call, login, prefs, retry.
    assert rpc.count_calls() == 7


def test_outage_raises_system_unavailable_then_recovers(tryton: TrytonServer) -> None:
    rpc = tryton.rpc()
    [p] = rpc.call(PARTY + "create", [{"name": "Before Outage"}])
    port = tryton.port
    tryton.stop()
    with pytest.raises(SystemUnavailable) as down:
        rpc.call(PARTY + "read", [p], ["name"])
    assert tryton.password not in str(down.value)
    tryton.start()
    assert tryton.port == port
    # Sessions live in the database, so the same client carries on without a new login.
    assert rpc.call(PARTY + "read", [p], ["name"])[0]["name"] == "Before Outage"
    assert rpc.login_count == 1


def test_read_timeout_raises_system_unavailable(tryton: TrytonServer) -> None:
    rpc = TrytonRPC(tryton.url, tryton.database, tryton.user, tryton.password, timeout=0.5)
    rpc.login()
    assert tryton.pid is not None
    os.kill(tryton.pid, signal.SIGSTOP)  # the kernel still accepts; nobody answers
    try:
        started = time_mod.monotonic()
        with pytest.raises(SystemUnavailable, match="timed out"):
            rpc.call(PARTY + "search_count", [])
        assert time_mod.monotonic() - started < 5
    finally:
        os.kill(tryton.pid, signal.SIGCONT)
    assert rpc.call(PARTY + "search_count", []) >= 2
    rpc.close()


def test_thread_calls_are_counted_per_thread(tryton: TrytonServer) -> None:
    rpc = tryton.rpc()
    base = rpc.count_calls()
    per_thread = {0: 2, 1: 3, 2: 5}
    seen: dict[int, int] = {}
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for _ in range(per_thread[n]):
                rpc.call(PARTY + "search_count", [])
            seen[n] = rpc.thread_calls()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert seen == per_thread
    assert rpc.thread_calls() == base  # the main thread made the login calls only
    assert rpc.count_calls() == base + sum(per_thread.values())


def test_concurrent_session_renewal_logs_in_once(tryton: TrytonServer) -> None:
    rpc = tryton.rpc()
    rpc.call("common.db.logout")
    barrier = threading.Barrier(4)
    results: list[int] = []

    def work() -> None:
        barrier.wait()
        results.append(rpc.call(PARTY + "search_count", []))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4
    # The threads that hit HTTP 401 on the dead session share one new login.
    assert rpc.login_count == 2
