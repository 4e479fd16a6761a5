"""Crash safety of rules: `crmsync sync` killed with SIGKILL while 300 firings act.

After the kills and a clean run, every contact closed fired once: one firing
row, one activity in the CRM (an interrupted activity is found again, not
written twice), its prospect set, and one webhook id per firing at the
receiver (a repeat carries the same id, so the receiver drops it).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from rulesenv import Cadence, Receiver, hook

__all__ = ["hook"]

N = 300

pytestmark = pytest.mark.slow


def _firings(d: Path) -> int:
    e = sa.create_engine(f"sqlite:///{d}/state.db")
    try:
        with e.connect() as c:
            return int(c.exec_driver_sql("SELECT count(*) FROM crmsync_rule_firings").scalar())
    finally:
        e.dispose()


def test_kill_dash_nine_while_rules_act_repeats_nothing(tmp_path: Path, hook: Receiver) -> None:
    s = Cadence(tmp_path, hook)
    for i in range(1, N + 1):
        s.contact(i, name=f"n{i}", email=f"c{i}@x.test", type="Lead", status="Open",
                  do_not_call=True, owner="kim")
    cmd = [sys.executable, "-m", "crmsync", "sync", "-c", str(tmp_path / "crmsync.yaml")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)  # baseline
    for i in range(1, N + 1):
        s.contact(i, status="Closed")

    rng = random.Random(int(os.environ.get("CRASH_SEED", "5")))
    kills = 0
    acted = 0
    midway = 0  # kills that landed with some actions done and some left
    for _ in range(12):
        acted = len(s.activities())
        if kills >= 5 or acted >= N * 0.9:
            break
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Aim past start-up (~0.5 s) into the actions still left.
        time.sleep(0.5 + rng.uniform(0.1, 1.5) * (1 - acted / N))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
            midway += 0 < len(s.activities()) < N
        p.wait(timeout=60)
    assert kills >= 3, f"only {kills} kills landed while the rules acted"
    assert midway >= 1, "no kill landed while the actions were under way"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

    assert _firings(tmp_path) == N
    acts = s.activities()
    assert len(acts) == N and len({a[0] for a in acts}) == N
    assert all(p[2] == "exited" for p in s.prospects().values())
    ids = [h["webhook-id"] for h, _ in hook.got]
    assert len(set(ids)) == N
    # and a further run fires nothing
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert _firings(tmp_path) == N and len(s.activities()) == N
