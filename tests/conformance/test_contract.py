"""The connector contract (``crmsync.connectors.base``), checked against every connector.

Each test runs once per subject (see conftest.py); a check a connector does not
take part in is skipped with the reason its subject or its Capabilities give.
Records carry a fresh token so tests on a shared system never see each other's.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from crmsync.errors import SettingError, SystemUnavailable
from crmsync.model import FieldSpec, FieldType, ObjectSpec
from crmsync.testing.conformance import (
    ACTIVITIES,
    FIELD_REJECTIONS,
    HARD_DELETE,
    HOSTILE,
    HOSTILE_NAMES,
    HOSTILE_TEXTS,
    REFUSED_SETTING,
    STAMP_CURSOR,
    STAMPS,
    UNAVAILABLE,
    UNSTAMPED,
    WRITE,
    Subject,
    drain,
    ids_of,
    scan_all,
    stamp_order,
    token,
    wrong_types,
)


def need(subject: Subject, *features: str) -> None:
    """Skip, saying why, when the subject does not take part in a feature."""
    for f in features:
        why = subject.lacking(f)
        if why is not None:
            pytest.skip(why)


def rows(subject: Subject, n: int, **extra: Any) -> list[dict[str, Any]]:
    """``n`` records with unique match values and some text."""
    tok = token()
    r = subject.roles
    return [{r.match: f"m-{tok}-{i:02d}", r.text: f"text {i}", **extra} for i in range(n)]


def instant() -> datetime:
    # Whole seconds: MariaDB DATETIME keeps no fraction.
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(minutes=5)


def spec_of(subject: Subject) -> ObjectSpec:
    return subject.connector.describe(subject.obj)


# -- describe ------------------------------------------------------------------------

def test_describe_reports_typed_fields(subject: Subject) -> None:
    conn, obj = subject.connector, subject.obj
    assert obj in conn.objects()
    spec = spec_of(subject)
    assert spec.name == obj
    assert spec.key in spec.fields
    for name, fs in spec.fields.items():
        assert isinstance(fs, FieldSpec) and fs.name == name and isinstance(fs.type, FieldType)
    for role in (subject.roles.match, subject.roles.text):
        assert spec.fields[role].type is FieldType.STRING
    assert {n: spec.fields[n].type for n in subject.types} == dict(subject.types)
    if spec.updated_at is not None:
        assert spec.updated_at in spec.fields


def test_read_values_have_the_described_types(subject: Subject) -> None:
    [rid] = subject.seed(rows(subject, 1), None)
    rec = subject.connector.read(subject.obj, [rid])[rid]
    spec = spec_of(subject)
    assert isinstance(rec.id, str) and rec.id == rid  # ids cross as text
    assert set(rec.values) <= set(spec.fields), "values of fields describe() does not report"
    assert str(rec.values[spec.key]) == rid
    assert list(wrong_types(rec, {n: f.type for n, f in spec.fields.items()})) == []


# -- read by ids, find by match keys, scan ----------------------------------------------

def test_read_by_ids_leaves_missing_ids_out(subject: Subject) -> None:
    ids = subject.seed(rows(subject, 3), None)
    conn, obj = subject.connector, subject.obj
    missing = ["999999999", "no such id", "", "-1", ids[0] + "0000"]
    got = conn.read(obj, [ids[0], *missing, ids[2], ids[2]])
    assert set(got) == {ids[0], ids[2]}
    assert all(got[i].id == i for i in got)
    assert conn.read(obj, []) == {}
    assert conn.read(obj, missing) == {}
    assert conn.existing(obj, [ids[1], *missing]) == {ids[1]}


def test_find_by_match_key(subject: Subject) -> None:
    data = rows(subject, 3)
    ids = subject.seed(data, None)
    conn, obj, m = subject.connector, subject.obj, subject.roles.match
    found = conn.find(obj, m, [data[0][m], data[2][m], data[2][m], f"nothing-{token()}"])
    assert sorted(r.id for r in found) == sorted([ids[0], ids[2]])
    assert {r.values[m] for r in found} == {data[0][m], data[2][m]}
    assert conn.find(obj, m, [f"nothing-{token()}"]) == []


def test_scan_pages_through_every_record_once(subject: Subject) -> None:
    ids = subject.seed(rows(subject, 5), None)
    got = scan_all(subject.connector, subject.obj, limit=2)
    assert Counter(ids_of(got, ids)) == Counter(ids)
    # Key order: ``after_id`` paging depends on it.
    keys = [r.values[spec_of(subject).key] for r in got]
    assert keys == sorted(keys)
    count = subject.connector.count(subject.obj)
    assert count is None or count >= len(ids)


# -- capture: ties, start cursor, lookback ---------------------------------------------

def test_capture_ties_across_a_page_boundary(subject: Subject) -> None:
    """Records stamped in one instant, paged 2 by 2: each captured exactly once."""
    conn, obj = subject.connector, subject.obj
    start = conn.start_cursor(obj)  # SQL: None (a new table); shared systems: now
    at = None if subject.lacking(STAMPS) else instant()
    ids = subject.seed(rows(subject, 5), at)
    spec = spec_of(subject)
    if spec.updated_at is not None:
        stamps = {r.values[spec.updated_at] for r in conn.read(obj, ids).values()}
        assert len(stamps) == 1, f"the seed did not make a tie: {stamps}"
    got, _ = drain(conn, obj, start, limit=2)
    assert Counter(ids_of(got, ids)) == Counter(ids)
    if not subject.lacking(STAMP_CURSOR):
        # Ordered by (updated_at, key): the key breaks the tie.
        assert stamp_order(got) == sorted(stamp_order(got))


def test_nothing_new_after_the_last_page(subject: Subject) -> None:
    conn, obj = subject.connector, subject.obj
    start = conn.start_cursor(obj)
    subject.seed(rows(subject, 3), None)
    _, cursor = drain(conn, obj, start, limit=2)
    again, cursor2 = drain(conn, obj, cursor, limit=2)
    assert again == []
    new = subject.seed(rows(subject, 2), None)
    got, _ = drain(conn, obj, cursor2, limit=2)
    assert Counter(ids_of(got, new)) == Counter(new)


def test_start_cursor_then_new_records_are_captured(subject: Subject) -> None:
    conn, obj = subject.connector, subject.obj
    subject.seed(rows(subject, 2), None)
    start = conn.start_cursor(obj)
    new = subject.seed(rows(subject, 3), None)
    got, _ = drain(conn, obj, start, limit=2)
    assert set(new) <= set(ids_of(got))


def test_start_cursor_rereads_the_high_water_instant(subject: Subject) -> None:
    """Rows stamped at the high-water mark are read again, never lost."""
    need(subject, STAMP_CURSOR)
    conn, obj = subject.connector, subject.obj
    at = None if subject.lacking(STAMPS) else instant()
    ids = subject.seed(rows(subject, 3), at)
    got, _ = drain(conn, obj, conn.start_cursor(obj), limit=2)
    assert set(ids) <= set(ids_of(got))


def test_lookback_reads_the_overlap_again(subject: Subject) -> None:
    need(subject, STAMP_CURSOR)
    conn, obj = subject.connector, subject.obj
    start = conn.start_cursor(obj)
    at = None if subject.lacking(STAMPS) else instant()
    ids = subject.seed(rows(subject, 3), at)
    _, cursor = drain(conn, obj, start, limit=2)
    assert drain(conn, obj, cursor, limit=2)[0] == []
    # The seeded rows share the cursor's own stamp: any lookback reaches them.
    got, _ = drain(conn, obj, cursor, limit=2, lookback=1.0)
    assert set(ids) <= set(ids_of(got))


def test_lookback_catches_a_late_commit(subject: Subject) -> None:
    """A row committed after the cursor moved on, stamped before it (its
    transaction started earlier): read only through the lookback window."""
    need(subject, STAMP_CURSOR, STAMPS)
    conn, obj = subject.connector, subject.obj
    t = instant()
    subject.seed(rows(subject, 2), t)
    _, cursor = drain(conn, obj, None, limit=2)
    late = subject.seed(rows(subject, 1), t - timedelta(seconds=1))
    assert ids_of(drain(conn, obj, cursor, limit=2)[0], late) == []  # strictly after
    got, _ = drain(conn, obj, cursor, limit=2, lookback=2.0)
    assert ids_of(got, late) == late


def test_unstamped_rows_are_scanned_not_captured(subject: Subject) -> None:
    need(subject, STAMP_CURSOR, STAMPS)
    conn, obj = subject.connector, subject.obj
    stamped = subject.seed(rows(subject, 2), instant())
    bare = subject.seed(rows(subject, 2), UNSTAMPED)
    got, _ = drain(conn, obj, None, limit=2)
    assert Counter(ids_of(got, stamped + bare)) == Counter(stamped)
    assert set(stamped + bare) <= set(ids_of(scan_all(conn, obj, limit=2)))


# -- writes -------------------------------------------------------------------------------

def test_write_creates_and_updates(subject: Subject) -> None:
    need(subject, WRITE)
    conn, obj, r = subject.connector, subject.obj, subject.roles
    data = rows(subject, 3)
    res = conn.write(obj, creates=data)
    assert res.errors == {} and res.refused == {}
    assert len(res.created) == 3 and None not in res.created
    assert all(isinstance(i, str) for i in res.created)  # ids cross as text
    ids = [str(i) for i in res.created]
    got = conn.read(obj, ids)
    # ``created`` follows the order of the creates.
    assert [got[i].values[r.match] for i in ids] == [d[r.match] for d in data]
    res = conn.write(obj, updates=[(ids[0], {r.text: "changed"}), (ids[2], {r.text: None})])
    assert res.errors == {} and res.refused == {} and res.created == []
    got = conn.read(obj, ids)
    assert [got[i].values[r.text] for i in ids] == ["changed", "text 1", None]
    assert got[ids[0]].values[r.match] == data[0][r.match]  # untouched fields stay


def test_writes_are_captured(subject: Subject) -> None:
    """What the connector writes, it stamps: the next poll reads it (with the
    lookback a coarse clock needs, as configured by default)."""
    need(subject, WRITE, STAMP_CURSOR)
    conn, obj, r = subject.connector, subject.obj, subject.roles
    start = conn.start_cursor(obj)
    ids = subject.seed(rows(subject, 2), None)
    _, cursor = drain(conn, obj, start, limit=2)
    res = conn.write(obj, creates=rows(subject, 1), updates=[(ids[1], {r.text: "again"})])
    assert res.errors == {}
    got, _ = drain(conn, obj, cursor, limit=2, lookback=2.0)
    assert {ids[1], str(res.created[0])} <= set(ids_of(got))


def test_write_deletes(subject: Subject) -> None:
    need(subject, WRITE, HARD_DELETE)
    conn, obj = subject.connector, subject.obj
    ids = subject.seed(rows(subject, 3), None)
    res = conn.write(obj, deletes=[ids[1]])
    assert res.errors == {}
    assert set(conn.read(obj, ids)) == {ids[0], ids[2]}
    assert conn.existing(obj, ids) == {ids[0], ids[2]}


def test_write_reports_every_failure_per_item(subject: Subject) -> None:
    """Items that cannot be written are answered one by one, keyed as the contract
    says; nothing raises (push-only systems refuse every item this way)."""
    conn, obj = subject.connector, subject.obj
    [rid] = subject.seed(rows(subject, 1), None)
    missing = "999999999"
    res = conn.write(
        obj,
        creates=[{f"no such field {token()}": 1}],
        updates=[(missing, {subject.roles.text: "x"})],
    )
    assert res.created == [None]
    assert {"create:0", missing} <= set(res.errors), res.errors
    assert set(res.errors) <= {"create:0", missing}
    assert all(isinstance(v, str) and v for v in res.errors.values())
    assert rid in conn.read(obj, [rid])


def test_write_answers_ids_that_cannot_exist_per_item(subject: Subject) -> None:
    """Ids cross the boundary as text: one the key's type cannot hold is a
    record that does not exist (as ``read`` treats it), never an exception."""
    conn, obj, text = subject.connector, subject.obj, subject.roles.text
    ids = subject.seed(rows(subject, 2), None)
    res = conn.write(
        obj, updates=[("not an id", {text: "x"}), (ids[0], {text: "y"})],
        deletes=["not an id either"],
    )
    assert "not an id" in res.errors
    assert set(res.errors) <= {"not an id", "not an id either", ids[0]}
    if not subject.lacking(WRITE):
        assert ids[0] not in res.errors
        assert conn.read(obj, [ids[0]])[ids[0]].values[text] == "y"


def test_write_one_bad_item_never_fails_the_others(subject: Subject) -> None:
    need(subject, WRITE)
    conn, obj, r = subject.connector, subject.obj, subject.roles
    assert r.refusable is not None
    data = rows(subject, 3)
    data[1][r.refusable] = subject.bad_value
    res = conn.write(obj, creates=data)
    good = [res.created[0], res.created[2]]
    assert None not in good and "create:0" not in res.errors and "create:2" not in res.errors
    # The bad one failed whole, or was written without the refused field.
    assert ("create:1" in res.errors) != (r.refusable in res.refused.get("create:1", {}))
    assert (res.created[1] is None) == ("create:1" in res.errors)
    got = conn.read(obj, [str(i) for i in good])
    assert [got[str(i)].values[r.text] for i in good] == ["text 0", "text 2"]

    ids = subject.seed(rows(subject, 3), None)
    res = conn.write(obj, updates=[
        (ids[0], {r.text: "new 0"}),
        (ids[1], {r.text: "new 1", r.refusable: subject.bad_value}),
        (ids[2], {r.text: "new 2"}),
    ])
    assert ids[0] not in res.errors and ids[2] not in res.errors
    assert (ids[1] in res.errors) != (r.refusable in res.refused.get(ids[1], {}))
    got = conn.read(obj, ids)
    assert [got[ids[0]].values[r.text], got[ids[2]].values[r.text]] == ["new 0", "new 2"]
    assert got[ids[1]].values[r.refusable] != subject.bad_value


def test_write_a_refused_field_is_rejected_and_the_rest_written(subject: Subject) -> None:
    need(subject, WRITE, FIELD_REJECTIONS)
    conn, obj, r = subject.connector, subject.obj, subject.roles
    assert r.refusable is not None
    data = rows(subject, 1)
    data[0][r.refusable] = subject.bad_value
    res = conn.write(obj, creates=data)
    assert res.errors == {} and res.created[0] is not None
    assert set(res.refused) == {"create:0"} and set(res.refused["create:0"]) == {r.refusable}
    assert res.refused["create:0"][r.refusable]  # says why
    new = str(res.created[0])
    rec = conn.read(obj, [new])[new]
    assert rec.values[r.match] == data[0][r.match] and rec.values[r.text] == "text 0"
    assert rec.values[r.refusable] is None

    res = conn.write(obj, updates=[(new, {r.text: "kept", r.refusable: subject.bad_value})])
    assert res.errors == {} and set(res.refused) == {new}
    assert set(res.refused[new]) == {r.refusable}
    assert conn.read(obj, [new])[new].values[r.text] == "kept"


def test_write_never_drops_a_kept_field_from_a_create(subject: Subject) -> None:
    """A refused match key fails the create: written without it, a retried create
    could not find its record and would make a second one."""
    need(subject, WRITE, FIELD_REJECTIONS)
    conn, obj, r = subject.connector, subject.obj, subject.roles
    assert r.refusable is not None
    data = rows(subject, 2)
    data[0][r.refusable] = subject.bad_value
    res = conn.write(obj, creates=data, keep=[r.refusable, r.match])
    assert res.created[0] is None and "create:0" in res.errors
    assert res.created[1] is not None and "create:1" not in res.errors
    assert conn.find(obj, r.match, [data[0][r.match]]) == []


# -- unavailable (system down) vs refused (bad value) -------------------------------------

def test_a_down_system_raises_unavailable(subject: Subject) -> None:
    need(subject, UNAVAILABLE)
    assert subject.down is not None
    obj, r = subject.obj, subject.roles
    with subject.down() as conn:
        calls: list[tuple[str, Any]] = [
            ("describe", lambda: conn.describe(obj)),
            ("read", lambda: conn.read(obj, ["1"])),
            ("find", lambda: conn.find(obj, r.match, ["x"])),
            ("scan", lambda: conn.scan(obj, None, 10)),
            ("read_changes", lambda: conn.read_changes(obj, None, 10)),
            ("start_cursor", lambda: conn.start_cursor(obj)),
        ]
        unwritten = rows(subject, 1)
        if not subject.lacking(WRITE):
            calls.append(("write", lambda: conn.write(obj, creates=unwritten)))
        for what, call in calls:
            with pytest.raises(SystemUnavailable) as info:
                call()
            # A server that is down is an outage, not a wrong setting.
            assert not isinstance(info.value, SettingError), (what, info.value)
    # Nothing was written meanwhile; the system answers again.
    assert subject.connector.find(obj, r.match, [unwritten[0][r.match]]) == []


def test_a_refused_setting_is_a_setting_error(subject: Subject) -> None:
    """A database the server does not have is the config's problem, named by its
    key (and still a SystemUnavailable: a running worker pauses, loses nothing)."""
    need(subject, REFUSED_SETTING)
    assert subject.misconfigured is not None
    with subject.misconfigured() as conn:
        with pytest.raises(SettingError) as info:
            conn.describe(subject.obj)
    assert isinstance(info.value, SystemUnavailable)
    assert info.value.key.startswith("systems.sys."), info.value.key


# -- hostile identifiers and values --------------------------------------------------------

def test_hostile_names_round_trip(subject: Subject) -> None:
    """Names with spaces, unicode, reserved words, mixed case, % and ?."""
    need(subject, HOSTILE_NAMES)
    spec = spec_of(subject)
    names = [HOSTILE[k] for k in ("key", "match", "text", "refusable", "amount", "flag", "day")]
    assert set(names) <= set(spec.fields)
    assert spec.key == HOSTILE["key"]
    conn, obj = subject.connector, subject.obj

    def row() -> dict[str, Any]:
        return {HOSTILE["match"]: f"m-{token()}", HOSTILE["text"]: "t", HOSTILE["refusable"]: 7,
                HOSTILE["amount"]: Decimal("12.34"), HOSTILE["flag"]: True,
                HOSTILE["day"]: instant().date()}

    seeded = row()
    [rid] = subject.seed([seeded], None)
    rec = conn.read(obj, [rid])[rid]
    assert {k: rec.values[k] for k in seeded} == seeded
    assert [r.id for r in conn.find(obj, HOSTILE["match"], [seeded[HOSTILE["match"]]])] == [rid]
    if subject.lacking(WRITE):
        return
    # The connector's own statements with these names: create, update, capture, delete.
    start = conn.start_cursor(obj)
    written = row()
    res = conn.write(obj, creates=[written])
    assert res.errors == {} and res.refused == {} and res.created[0] is not None
    new = str(res.created[0])
    assert {k: conn.read(obj, [new])[new].values[k] for k in written} == written
    change = {HOSTILE["amount"]: Decimal("-0.5"), HOSTILE["flag"]: False, HOSTILE["day"]: None}
    assert conn.write(obj, updates=[(new, change)]).errors == {}
    assert {k: conn.read(obj, [new])[new].values[k] for k in change} == change
    assert new in ids_of(drain(conn, obj, start, limit=2)[0])
    if not subject.lacking(HARD_DELETE):
        assert conn.write(obj, deletes=[new]).errors == {}
        assert conn.read(obj, [new]) == {}


def _hostile_rows(subject: Subject) -> list[dict[str, Any]]:
    tok, r = token(), subject.roles
    out = [{r.match: f"m-{tok}-{k}", r.text: v} for k, v in HOSTILE_TEXTS.items()]
    out.append({r.match: f"m-{tok}-null", r.text: None})
    # Match keys that need quoting are still found.
    out += [{r.match: f"{HOSTILE_TEXTS[k][:60]} {tok}", r.text: k} for k in ("quotes", "unicode")]
    return out


def _check_hostile(subject: Subject, data: list[dict[str, Any]], ids: list[str]) -> None:
    conn, obj, r = subject.connector, subject.obj, subject.roles
    got = conn.read(obj, ids)
    assert [got[i].values[r.text] for i in ids] == [d[r.text] for d in data]
    assert [got[i].values[r.match] for i in ids] == [d[r.match] for d in data]
    for d, i in zip(data[-2:], ids[-2:], strict=True):
        assert [x.id for x in conn.find(obj, r.match, [d[r.match]])] == [i]


def test_hostile_values_round_trip_through_the_system(subject: Subject) -> None:
    """Unicode, quotes, long text, whitespace, and '' kept apart from NULL."""
    data = _hostile_rows(subject)
    _check_hostile(subject, data, subject.seed(data, None))


def test_hostile_values_round_trip_through_write(subject: Subject) -> None:
    need(subject, WRITE)
    data = _hostile_rows(subject)
    res = subject.connector.write(subject.obj, creates=data)
    assert res.errors == {} and res.refused == {} and None not in res.created
    _check_hostile(subject, data, [str(i) for i in res.created])


# -- timelines ------------------------------------------------------------------------------

def test_activities_are_added_and_removed(subject: Subject) -> None:
    need(subject, ACTIVITIES)
    conn, obj = subject.connector, subject.obj
    ids = subject.seed(rows(subject, 2), None)
    notes = conn.add_activities(obj, [(ids[0], "first ü 'x'"), (ids[1], "second")])
    assert len(notes) == 2 and len(set(notes)) == 2
    conn.remove_activities(notes)
    conn.remove_activities(notes)  # already gone: no error
    assert conn.add_activities(obj, []) == []
