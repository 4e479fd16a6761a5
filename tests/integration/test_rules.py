"""Rules that act: the cadence job on real SQLite systems, a real loopback webhook receiver.

A contact closed in the CRM leaves its cadence (a ``set`` through the link's
pairing), gets an activity in the CRM's activity table, is synced now and
announced by a signed webhook; a call outcome in the cadence system becomes an
activity on the CRM contact. Nothing fires twice, nothing fires on crmsync's
own writes, nothing fires for records that existed before the rule.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dbs import fresh_database
from rulesenv import SECRET, Cadence, Receiver, hook

from crmsync.engine.retry import RetryPolicy

__all__ = ["hook"]


# The state on SQLite and on PostgreSQL (where workers claim with SKIP LOCKED).
STATES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]


@pytest.mark.parametrize("state", STATES)
def test_cadence_rules_fire_once_and_act(tmp_path: Path, hook: Receiver, state: str) -> None:
    with fresh_database(state, tmp_path, "state") as url:
        _cadence_rules_fire_once_and_act(Cadence(tmp_path, hook, url), hook)


def _cadence_rules_fire_once_and_act(s: Cadence, hook: Receiver) -> None:
    s.contact(1, name="Ada", email="ada@x.test", type="Lead", status="Open", do_not_call=False,
              owner="kim")
    s.contact(2, name="Bob", email="bob@x.test", type="Partner", status="Open",
              do_not_call=True, owner="kim")
    first = s.sync()
    assert set(s.prospects()) == {"ada@x.test", "bob@x.test"}
    # The records that existed when the rules started are their baseline: no firing.
    assert first["rule:exit_cadence"].get("fired", 0) == 0
    assert first["rule:call_outcome"].get("fired", 0) == 0
    assert s.activities() == [] and hook.got == []

    # Closed with do-not-call: every action, in order, once.
    s.contact(1, status="Closed", do_not_call=True)
    # Closed, but not a Lead/Contact: the record type criterion holds it back.
    s.contact(2, status="Closed", owner="lee")
    counts = s.sync()
    assert counts["rule:exit_cadence"]["fired"] == 1
    assert s.prospects()["ada@x.test"][1:] == (None, "exited")
    assert s.prospects()["bob@x.test"][1:] == ("onboarding", "active")
    assert s.activities() == [(1, "Removed from cadence", "Closed by kim")]
    (ev,) = hook.events()
    assert ev["rule"] == "exit_cadence" and ev["record"] == "crm.contact:1"
    assert ev["values"]["status"] == "Closed" and set(ev["changed"]) == {"status", "do_not_call"}
    # The rule's own `set` on the prospect is no call outcome: call_outcome stays quiet.
    assert counts.get("rule:call_outcome", {}).get("fired", 0) == 0

    # Nothing new: nothing fires again (re-reads, echoes of crmsync's writes).
    again = s.sync()
    assert again.get("rule:exit_cadence", {}).get("fired", 0) == 0
    assert again.get("rule:call_outcome", {}).get("fired", 0) == 0
    assert len(hook.got) == 1 and len(s.activities()) == 1

    # A touch outcome in the cadence system becomes an activity on the CRM contact.
    s.prospect_set("ada@x.test", last_outcome="connected", last_notes="wants a demo")
    counts = s.sync()
    assert counts["rule:call_outcome"].get("fired") == 1, counts
    assert s.activities()[-1] == (1, "Call: connected", "wants a demo")
    s.sync()
    assert len(s.activities()) == 2

    # A new contact after the rule started counts as changed from nothing.
    s.contact(3, name="Cy", email="cy@x.test", type="Contact", status="Closed",
              do_not_call=True, owner="kim")
    counts = s.sync()
    assert counts["rule:exit_cadence"]["fired"] == 1
    assert s.prospects()["cy@x.test"][1:] == (None, "exited")

    # Every action left an outcome and a timeline entry on the watched record.
    with s.state().connect() as c:
        rows = c.exec_driver_sql(
            "SELECT action, status FROM crmsync_outcomes WHERE link = 'rule:exit_cadence'"
            " AND source_ref = 'crm.contact:1' ORDER BY id").all()
    assert [tuple(r) for r in rows] == [
        ("fired", "ok"), ("set", "ok"), ("activity", "ok"), ("sync", "ok"), ("webhook", "ok")]


@pytest.mark.parametrize("state", STATES)
def test_failed_webhook_is_retried_with_the_same_id(
    tmp_path: Path, hook: Receiver, state: str
) -> None:
    with fresh_database(state, tmp_path, "state") as url:
        _failed_webhook_is_retried_with_the_same_id(Cadence(tmp_path, hook, url), hook)


def _failed_webhook_is_retried_with_the_same_id(s: Cadence, hook: Receiver) -> None:
    s.contact(1, name="Ada", email="ada@x.test", type="Lead", status="Open", do_not_call=True,
              owner="kim")
    s.sync()
    hook.statuses = [503, 500]
    s.contact(1, status="Closed")
    fast = RetryPolicy(initial=0.0, jitter=False)
    counts = s.sync(fast)
    assert counts["rule:exit_cadence"]["failed"] == 1  # 503: retried later, not in this run
    # The actions before the webhook are done and never repeated.
    assert len(s.activities()) == 1
    s.sync(fast)  # 500 again
    s.sync(fast)  # 204
    events = hook.events()
    assert len(events) == 3 and len({e["id"] for e in events}) == 1
    assert len(s.activities()) == 1
    assert s.prospects()["ada@x.test"][2] == "exited"
    with s.state().connect() as c:
        left = c.execute(sa.text(
            "SELECT count(*) FROM crmsync_messages WHERE link LIKE 'rule:%'")).scalar()
    assert left == 0
    # the failed tries are in the log with their reason
    with s.state().connect() as c:
        msgs = [r[0] for r in c.exec_driver_sql(
            "SELECT message FROM crmsync_outcomes WHERE link = 'rule:exit_cadence'"
            " AND status = 'failed'")]
    assert len(msgs) == 2 and "503" in msgs[0] and "500" in msgs[1]
    json.dumps(msgs)


def _cli(d: Path, *args: str) -> Any:
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "crmsync", *args, "-c", str(d / "crmsync.yaml")],
                          capture_output=True, text=True, cwd=d, timeout=120,
                          env={**os.environ, "COLUMNS": "250"})


def test_check_names_every_mistake_in_rules(tmp_path: Path, hook: Receiver) -> None:
    from configrun import check_text

    s = Cadence(tmp_path, hook)
    text = (tmp_path / "crmsync.yaml").read_text()
    text = text.replace("{field: do_not_call, op: is_true}", "{field: do_not_cal, op: is_true}")
    text = text.replace("{field: type, op: in, value: [Lead, Contact]}",
                        "{field: type, op: is_true}")
    text = text.replace('"{status} by {owner}"', '"{status} by {ownr}"')
    text = text.replace("values: {cadence: null, state: exited}",
                        "values: {cadense: null, state: exited}")
    text = text.replace(f'secret: "{SECRET}"', 'secret: "not-a-secret"')
    got = check_text(text)
    msgs = "\n".join(f"{loc}: {m}" for loc, m in got)
    assert "rules.exit_cadence.when.all[2].any[0].field" in msgs and "do_not_cal" in msgs
    assert "rules.exit_cadence.when.all[0]" in msgs and "is_true" in msgs
    assert "rules.exit_cadence.then[1].activity.body" in msgs and "'ownr'" in msgs
    assert "rules.exit_cadence.then[0].set.values.cadense" in msgs
    assert "rules.exit_cadence.then[3].webhook.secret" in msgs
    assert len(got) == 5, msgs
    # Unknown links and objects are refused when the file is read.
    bad = text.replace("via: prospects, values", "via: prospect, values")
    bad = bad.replace("on: cadence.prospect", "on: cadence.prospects")
    (tmp_path / "crmsync.yaml").write_text(bad)
    r = _cli(tmp_path, "check")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "rules.exit_cadence.then[0].set.via" in r.stderr and "'prospect'" in r.stderr
    assert "rules.call_outcome.on" in r.stderr and "'prospects'" in r.stderr
    assert "Traceback" not in r.stderr
    del s


def test_sync_command_reports_and_logs_rules(tmp_path: Path, hook: Receiver) -> None:
    s = Cadence(tmp_path, hook)
    s.contact(1, name="Ada", email="ada@x.test", type="Lead", status="Open", do_not_call=True,
              owner="kim")
    r = _cli(tmp_path, "sync")
    assert r.returncode == 0, r.stdout + r.stderr
    s.contact(1, status="Closed")
    # plan: which rules would fire for the pending changes and what they would do
    r = _cli(tmp_path, "plan")
    assert r.returncode == 0, r.stdout + r.stderr
    for text in ("rule:exit_cadence: would fire", "crm.contact:1 (changed: status)",
                 "set cadence = None, state = 'exited' via prospects",
                 "activity 'Removed from cadence'", "sync through prospects",
                 "webhook to 127.0.0.1"):
        assert text in r.stdout, (text, r.stdout)
    assert hook.got == [] and s.activities() == []  # nothing written
    r = _cli(tmp_path, "sync")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "exit_cadence" in r.stdout and "fired" in r.stdout
    r = _cli(tmp_path, "log", "--record", "crm.contact:1")
    assert r.returncode == 0, r.stdout + r.stderr
    for text in ("Rule exit_cadence", "fired", "set on cadence.prospect:1", "activity on",
                 "queued through link prospects", "webhook 127.0.0.1 answered 204"):
        assert text in r.stdout, (text, r.stdout)


def test_an_action_out_of_attempts_is_listed_failed_and_retried(
    tmp_path: Path, hook: Receiver
) -> None:
    s = Cadence(tmp_path, hook)
    s.contact(1, name="Ada", email="ada@x.test", type="Lead", status="Open", do_not_call=True,
              owner="kim")
    s.sync()
    hook.statuses = [500, 500]
    s.contact(1, status="Closed")
    two = RetryPolicy(initial=0.0, jitter=False, max_attempts=2)
    s.sync(two)
    s.sync(two)  # second attempt: out of attempts
    r = _cli(tmp_path, "status")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if "exit_cadence" in line)
    # pending, running, failed, fired
    assert [c.strip() for c in row.split("│")[5:9]] == ["0", "0", "1", "1"], row
    r = _cli(tmp_path, "log", "--link", "rule:exit_cadence", "--status", "failed")
    assert r.returncode == 0 and "answered 500" in r.stdout, r.stdout + r.stderr
    assert _cli(tmp_path, "retry", "--link", "rule:nosuch").returncode == 2
    r = _cli(tmp_path, "retry", "--link", "rule:exit_cadence")
    assert r.returncode == 0 and "1 failed message(s) back" in r.stdout, r.stdout + r.stderr
    s.sync(two)
    events = hook.events()
    assert len(events) == 3 and len({e["id"] for e in events}) == 1
    assert len(s.activities()) == 1  # the actions before it are not repeated


def test_erasure_scrubs_what_rules_kept_and_fires_nothing(tmp_path: Path, hook: Receiver) -> None:
    import sqlalchemy as sa

    s = Cadence(tmp_path, hook)
    s.contact(1, name="Ada Secret", email="ada@x.test", type="Lead", status="Open",
              do_not_call=True, owner="kim")
    s.sync()
    s.contact(1, status="Closed")
    s.sync()
    assert len(s.activities()) == 1
    r = _cli(tmp_path, "erase", "crm.contact:1", "--yes", "--by", "dpo")
    assert r.returncode == 0, r.stdout + r.stderr
    # The activity crmsync wrote into the CRM is gone with the rest of its notes.
    assert s.activities() == []
    st = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    with st.connect() as c:
        dump = "\n".join(
            str(tuple(row)) for t in ("crmsync_rule_firings", "crmsync_trigger_seen",
                                      "crmsync_outcomes", "crmsync_activities", "crmsync_messages")
            for row in c.exec_driver_sql(f"SELECT * FROM {t}")
        )
    st.dispose()
    assert "Ada Secret" not in dump and "ada@x.test" not in dump
    # The anonymized record is crmsync's own write: no rule fires on it.
    counts = s.sync()
    assert counts.get("rule:exit_cadence", {}).get("fired", 0) == 0
