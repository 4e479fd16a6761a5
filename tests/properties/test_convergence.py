"""Stateful property test: random edits on both sides of a `both` link, interleaved with syncs.

After every sync both sides hold the same values, each field's value is the
one the conflict policy picks among the edits made since the last sync, and
an immediate second sync writes nothing to either side.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from scenario import Scenario

RECORDS = [f"C{i:05d}" for i in range(0, 10, 5)] + ["C00001", "C00006"]
FIELDS = ["name", "email"]
VALUES = st.sampled_from(["alpha", "beta", "gamma", "délta", "e"])


class BothWaySync(RuleBasedStateMachine):
    policy = "source"

    @initialize()
    def setup(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="crmsync-prop-"))
        url_e = f"sqlite:///{self.tmp / 'erp.db'}"
        url_c = f"sqlite:///{self.tmp / 'crm.db'}"
        import os

        os.environ["ERP_DB_URL"] = url_e
        # lookback makes same-instant edits impossible to miss; the overlap
        # it re-reads must not cause writes (checked by the quiet invariant)
        self.sc = Scenario(self.tmp, url_e, url_c, direction="both", email_direction="both",
                           conflict=self.policy, lookback=1)
        self.sc.seed(10, crm_existing=0)
        self.sc.sync()
        self.expected: dict[tuple[str, str], Any] = {}
        erp = self.sc.erp_rows()
        for r in RECORDS:
            for f in FIELDS:
                self.expected[(r, f)] = erp[r][f]
        self.edits: dict[tuple[str, str], dict[str, Any]] = {}

    @rule(rec=st.sampled_from(RECORDS), field=st.sampled_from(FIELDS), value=VALUES)
    def edit_source(self, rec: str, field: str, value: str) -> None:
        self.sc.erp_update(rec, **{field: value})
        self.edits.setdefault((rec, field), {})["source"] = value

    @rule(rec=st.sampled_from(RECORDS), field=st.sampled_from(FIELDS), value=VALUES)
    def edit_target(self, rec: str, field: str, value: str) -> None:
        self.sc.crm_update(rec, **{field: value})
        self.edits.setdefault((rec, field), {})["target"] = value

    @rule(rec=st.sampled_from(RECORDS), field=st.sampled_from(FIELDS), a=VALUES, b=VALUES)
    def edit_both(self, rec: str, field: str, a: str, b: str) -> None:
        # Both sides edit one field before the next sync: a conflict when a != b.
        self.edit_source(rec, field, a)
        self.edit_target(rec, field, b)

    @rule()
    def sync(self) -> None:
        self.sc.sync()
        for key, sides in self.edits.items():
            base = self.expected[key]
            s, t = sides.get("source", base), sides.get("target", base)
            if s == t or "target" not in sides or t == base:
                self.expected[key] = s
            elif "source" not in sides or s == base:
                self.expected[key] = t
            else:
                self.expected[key] = s if self.policy == "source" else t
        self.edits = {}
        erp, crm = self.sc.erp_rows(), self.sc.crm_rows()
        for (rec, field), want in self.expected.items():
            assert erp[rec][field] == want, (rec, field, "erp")
            assert crm[rec][field] == want, (rec, field, "crm")
        snap = (self.sc.erp_snapshot(), self.sc.crm_snapshot())
        r = self.sc.sync()
        assert r.counts["updated"] == 0 and r.counts["created"] == 0
        assert (self.sc.erp_snapshot(), self.sc.crm_snapshot()) == snap

    @invariant()
    def paired_once(self) -> None:
        if hasattr(self, "sc"):
            crm = self.sc.crm_rows()
            assert len([k for k in crm if k]) == 4  # 4 active of 10, never duplicated

    def teardown(self) -> None:
        if hasattr(self, "sc"):
            self.sc.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


class BothWaySyncTargetWins(BothWaySync):
    policy = "target"


_settings = settings(
    max_examples=20, stateful_step_count=15, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.slow
def test_both_way_sync_converges_source_policy() -> None:
    BothWaySync.TestCase.settings = _settings
    BothWaySync.TestCase().runTest()


@pytest.mark.slow
def test_both_way_sync_converges_target_policy() -> None:
    BothWaySyncTargetWins.TestCase.settings = _settings
    BothWaySyncTargetWins.TestCase().runTest()
