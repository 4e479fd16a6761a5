"""The README keeps its promises: every config key documented, the quick start runs.

The quick start's YAML is taken from the README itself and run with the real
CLI against a real target database on each backend, so a key renamed in the
code or a step that stops working breaks this test, not a user's first hour.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import pytest
import sqlalchemy as sa
from dbs import fresh_database
from pydantic import BaseModel

from crmsync.config.models import Config, Op

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"\n{title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def _models(tp: Any, seen: set[type]) -> None:
    """Every pydantic model reachable from ``tp`` (through unions, lists, dicts)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if tp in seen:
            return
        seen.add(tp)
        for f in tp.model_fields.values():
            _models(f.annotation, seen)
        return
    for arg in get_args(tp):
        _models(arg, seen)


def config_keys() -> dict[str, set[str]]:
    """Key as written in YAML -> the models it belongs to."""
    seen: set[type] = set()
    _models(Config, seen)
    keys: dict[str, set[str]] = {}
    for model in seen:
        for name, f in model.model_fields.items():
            keys.setdefault(f.alias or name, set()).add(model.__name__)
    return keys


def test_every_config_key_has_a_line_in_the_key_reference() -> None:
    ref = _section("### Every configuration key")
    keys = config_keys()
    assert {"state", "batch_size", "enabled", "trigger", "webhook_secret", "lookback"} <= set(keys)
    assert len(keys) >= 40, sorted(keys)
    missing = sorted(k for k in keys if f"`{k}`" not in ref)
    assert missing == [], f"keys not documented in the README: {missing}"


def test_every_operator_has_a_row_in_the_operator_table() -> None:
    ref = _section("### Every configuration key")
    rows = [line for line in ref.splitlines() if line.startswith("| `")]
    documented = {m for line in rows for m in re.findall(r"`(\w+)`", line.split("|")[1])}
    ops = {op.value for op in Op}
    assert {"changed", "changed_to", "is_false", "not_in"} <= ops
    assert ops - documented == set()


def _quick_start_yaml() -> str:
    section = _section("## Your own databases")
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the quick start has one config"
    return blocks[0]


def _pointed_at(yaml: str, tmp: Path, backend: str, crm_url: str) -> str:
    """The README's config with its example hosts replaced by this test's databases."""
    shop = "url: sqlite:////srv/shop/shop.db"
    assert shop in yaml
    yaml = yaml.replace(shop, f"url: sqlite:///{tmp / 'shop.db'}")
    u = sa.engine.make_url(crm_url)
    pg = "postgresql+psycopg://crmsync:${CRM_DB_PASSWORD}@db.example.com:5432/crm"
    maria = "mysql+pymysql://crmsync:${CRM_DB_PASSWORD}@db.example.com:3306/crm"
    assert f"url: {pg}" in yaml and f"# MariaDB/MySQL: {maria}" in yaml
    # The password stays a ${VAR}: the test sets it in the environment as a user would.
    mine = f"{u.username}:${{CRM_DB_PASSWORD}}@{u.host}:{u.port}/{u.database}"
    url = {"postgresql": pg, "mariadb": maria}[backend].replace(
        "crmsync:${CRM_DB_PASSWORD}@db.example.com:" + str(u.port) + "/crm", mine
    )
    return yaml.replace(f"url: {pg}", f"url: {url}")


def _tables(shop_url: str, crm_url: str) -> tuple[sa.Table, sa.Table, sa.Engine, sa.Engine]:
    md = sa.MetaData()
    customers = sa.Table(
        "customers", md,
        sa.Column("customer_no", sa.String(20), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("email", sa.String(100)),
        sa.Column("city", sa.String(60)),
        sa.Column("updated_at", sa.DateTime),
    )
    md2 = sa.MetaData()
    company = sa.Table(
        "company", md2,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("org_number", sa.String(20), unique=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("email", sa.String(100)),
        sa.Column("city", sa.String(60)),
        sa.Column("updated_at", sa.DateTime(timezone=False)),
    )
    shop, crm = sa.create_engine(shop_url), sa.create_engine(crm_url)
    md.create_all(shop)
    md2.create_all(crm)
    return customers, company, shop, crm


@pytest.mark.parametrize(
    "backend",
    [pytest.param("postgresql", marks=pytest.mark.postgresql),
     pytest.param("mariadb", marks=pytest.mark.mariadb)],
)
def test_quick_start_config_runs_check_plan_sync_log(tmp_path: Path, backend: str) -> None:
    with fresh_database(backend, tmp_path, "crm") as crm_url:
        yaml = _pointed_at(_quick_start_yaml(), tmp_path, backend, crm_url)
        (tmp_path / "crmsync.yaml").write_text(yaml, encoding="utf-8")
        customers, company, shop, crm = _tables(f"sqlite:///{tmp_path / 'shop.db'}", crm_url)
        now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        with shop.begin() as c:
            c.execute(customers.insert(), [
                {"customer_no": f"C{i}", "name": f"Customer {i}", "email": f"c{i}@x.example",
                 "city": "Oslo", "updated_at": now} for i in range(1, 6)
            ])
        with crm.begin() as c:  # one company exists already, under a stale name
            c.execute(company.insert(), [{"org_number": "C1", "name": "Old name"}])

        password = sa.engine.make_url(crm_url).password or ""
        env = {**os.environ, "CRM_DB_PASSWORD": password, "COLUMNS": "200"}

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "crmsync", *args], cwd=tmp_path, env=env,
                capture_output=True, text=True, timeout=120,
            )

        for step in ("check", "plan", "sync", "log"):
            r = run(step)
            assert r.returncode == 0, (step, r.stdout, r.stderr)
        assert (tmp_path / "crmsync.db").exists()  # the state, next to the config
        with crm.connect() as c:
            rows = c.execute(
                sa.select(company.c.org_number, company.c.name).order_by(company.c.org_number)
            ).all()
        assert rows == [(f"C{i}", f"Customer {i}") for i in range(1, 6)]  # C1 matched

        with shop.begin() as c:  # a change at the source, stamped as the README asks
            c.execute(customers.update().where(customers.c.customer_no == "C3").values(
                name="Renamed", updated_at=datetime.now(UTC).replace(tzinfo=None)))
        r = run("sync")
        assert r.returncode == 0, r.stderr
        with crm.connect() as c:
            assert c.execute(
                sa.select(company.c.name).where(company.c.org_number == "C3")
            ).scalar_one() == "Renamed"
        r = run("log", "--json")
        assert r.returncode == 0, r.stderr
        assert "Renamed" in r.stdout and "created" in r.stdout
        # The secret never reaches the state database.
        if len(password) >= 3:
            assert password.encode() not in (tmp_path / "crmsync.db").read_bytes()
        shop.dispose()
        crm.dispose()


def test_every_whole_config_in_the_readme_is_valid() -> None:
    """Each YAML block that defines every system its links name passes validation
    (an excerpt such as the Tryton one, which leaves systems out, is skipped)."""
    from ruamel.yaml import YAML

    from crmsync.config.loader import load_config_text

    whole = []
    for block in re.findall(r"```yaml\n(.*?)```", README, re.S):
        data = YAML(typ="safe").load(block)
        if not isinstance(data, dict) or not {"systems", "links"} <= set(data):
            continue
        used = {
            side.split(".")[0] for link in data["links"].values()
            for side in (link["source"], link["target"])
        }
        if used <= set(data["systems"]):
            whole.append(block)
    assert len(whole) >= 2
    names = set(re.findall(r"\$\{(\w+)\}", "".join(whole)))
    # URLs are checked when the file is loaded: a URL variable needs a URL's shape.
    env = {
        n: f"sqlite:///dummy-{n.lower()}.db" if n.endswith("_URL") else f"dummy-{n.lower()}"
        for n in names
    }
    for block in whole:
        config, _ = load_config_text(block, "README.md", env=env)
        assert config.links
