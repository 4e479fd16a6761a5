"""A small ERP -> CRM scenario on real databases, shared by the end-to-end tests."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from crmsync.config.loader import load_config
from crmsync.connectors import build_connectors
from crmsync.engine.runner import Engine, LinkReport
from crmsync.state.store import StateStore

md = sa.MetaData()
customers = sa.Table(
    "customers",
    md,
    sa.Column("customer_no", sa.String(20), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("email", sa.String(100)),
    sa.Column("credit_limit", sa.Numeric(12, 2)),
    sa.Column("status", sa.String(2)),
    sa.Column("contract_status", sa.String(10)),
    sa.Column("employees", sa.String(30)),
    sa.Column("since", sa.Date),
    sa.Column("changed_at", sa.DateTime),
    sa.Index("ix_customers_changed", "changed_at", "customer_no"),
)
company = sa.Table(
    "company",
    md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(100)),
    sa.Column("org_number", sa.String(20), unique=True),
    sa.Column("email", sa.String(100)),
    sa.Column("credit_limit", sa.Numeric(12, 2)),
    sa.Column("status", sa.String(20)),
    sa.Column("employees", sa.Integer),
    sa.Column("since", sa.Date),
    sa.Column("updated_at", sa.DateTime),
    sa.Index("ix_company_updated", "updated_at", "id"),
)

CONFIG = """\
state: {state}
systems:
  erp:
    connector: sql
    url: ${{ERP_DB_URL}}
    objects:
      customer:
        table: customers
        key: customer_no
        updated_at: changed_at
        deleted: {{field: status, value: X}}
        lookback: {lookback}
  crm:
    connector: sql
    url: {crm}
    objects:
      company: {{table: company, key: id, updated_at: updated_at, lookback: {lookback}}}
links:
  customers:
    source: erp.customer
    target: crm.company
    direction: {direction}
    match: {{customer_no: org_number}}
    filter:
      all:
        - {{field: contract_status, op: eq, value: active}}
    fields:
      - {{source: name, target: name}}
      - {{source: credit_limit, target: credit_limit}}
      - {{source: status, target: status, values: {{A: Active, I: Inactive, X: Deleted}}}}
      - {{source: email, target: email, direction: {email_direction}}}
      - {{source: employees, target: employees}}
      - {{source: since, target: since}}
    conflict: {conflict}
    on_delete: {{set: {{status: Deleted}}}}
    batch_size: {batch}
"""


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Scenario:
    """Two systems (ERP and CRM tables) plus a state database and a config file."""

    def __init__(
        self,
        tmp: Path,
        erp_url: str,
        crm_url: str,
        *,
        direction: str = "forward",
        email_direction: str = "backward",
        conflict: str = "source",
        batch: int = 50,
        state_url: str | None = None,
        monkeypatch: Any = None,
        lookback: float = 2,
    ) -> None:
        self.tmp = tmp
        self.erp = sa.create_engine(erp_url)
        self.crm = sa.create_engine(crm_url)
        md.create_all(self.erp, tables=[customers])
        md.create_all(self.crm, tables=[company])
        self.state_url = state_url or f"sqlite:///{tmp / 'state.db'}"
        self.config_path = tmp / "crmsync.yaml"
        self.config_path.write_text(
            CONFIG.format(
                state=self.state_url, crm=crm_url, direction=direction,
                email_direction=email_direction, conflict=conflict, batch=batch,
                lookback=lookback,
            )
        )
        self.erp_url = erp_url
        if monkeypatch is not None:
            monkeypatch.setenv("ERP_DB_URL", erp_url)

    # -- data --------------------------------------------------------------
    def seed(self, n: int = 120, crm_existing: int = 20) -> None:
        rows = []
        t = now() - timedelta(days=1)
        for i in range(n):
            rows.append(
                {
                    "customer_no": f"C{i:05d}",
                    "name": f"Customer {i}",
                    "email": f"c{i}@erp.example",
                    "credit_limit": Decimal(1000 + i) / 4,
                    "status": "A" if i % 7 else "I",
                    "contract_status": "active" if i % 5 < 2 else "none",
                    "employees": "ten thousand" if i == 10 else str(i * 3),
                    "since": date(2020, 1, 1) + timedelta(days=i),
                    # Every 13th row has no stamp: only the migration sees it.
                    "changed_at": None if i % 13 == 0 else t,
                }
            )
        with self.erp.begin() as c:
            c.execute(customers.insert(), rows)
        active = [r for r in rows if r["contract_status"] == "active"]
        crm_rows = [
            {"name": f"Stale {r['customer_no']}", "org_number": r["customer_no"],
             "email": "old@crm.example", "status": "Active", "updated_at": t}
            for r in active[:crm_existing]
        ]
        crm_rows.append({"name": "Unrelated Ltd", "org_number": None, "email": None,
                         "status": "Active", "updated_at": t})
        with self.crm.begin() as c:
            c.execute(company.insert(), crm_rows)

    def erp_update(self, customer_no: str, **values: Any) -> None:
        with self.erp.begin() as c:
            c.execute(
                customers.update()
                .where(customers.c.customer_no == customer_no)
                .values(**values, changed_at=now())
            )

    def crm_update(self, org_number: str, **values: Any) -> None:
        with self.crm.begin() as c:
            c.execute(
                company.update()
                .where(company.c.org_number == org_number)
                .values(**values, updated_at=now())
            )

    def erp_rows(self) -> dict[str, dict[str, Any]]:
        with self.erp.connect() as c:
            return {r.customer_no: dict(r._mapping) for r in c.execute(customers.select())}

    def crm_rows(self) -> dict[str | None, dict[str, Any]]:
        with self.crm.connect() as c:
            return {r.org_number: dict(r._mapping) for r in c.execute(company.select())}

    def crm_snapshot(self) -> list[tuple[Any, ...]]:
        with self.crm.connect() as c:
            return [tuple(r) for r in c.execute(company.select().order_by(company.c.id))]

    def erp_snapshot(self) -> list[tuple[Any, ...]]:
        with self.erp.connect() as c:
            q = customers.select().order_by(customers.c.customer_no)
            return [tuple(r) for r in c.execute(q)]

    # -- running ---------------------------------------------------------------
    @contextmanager
    def engine(self, *, readonly: bool = False) -> Iterator[Engine]:
        config = load_config(self.config_path)
        connectors = build_connectors(config)
        state = StateStore(config.state, readonly=readonly)
        state.migrate()
        try:
            yield Engine(config, state, connectors)
        finally:
            state.close()
            for c in connectors.values():
                c.close()

    def sync(self, *, full: bool = False) -> LinkReport:
        with self.engine() as e:
            (report,) = e.sync(full=full)
            with e.state.connect() as c:
                left = e.state.queue_counts(c)
        assert report.status == "ok", report.error
        # every captured change was applied and left the queue
        assert not left.get("pending") and not left.get("running"), left
        return report

    def plan(self) -> LinkReport:
        with self.engine(readonly=True) as e:
            (report,) = e.sync(dry_run=True)
        return report

    def outcomes(self, **kw: Any) -> list[dict[str, Any]]:
        st = StateStore(self.state_url)
        try:
            return st.outcomes(limit=10_000, **kw)
        finally:
            st.close()

    def close(self) -> None:
        self.erp.dispose()
        self.crm.dispose()


def dedent(s: str) -> str:
    return textwrap.dedent(s)
