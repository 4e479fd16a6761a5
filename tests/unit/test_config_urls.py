"""Database and server URLs are checked when the file is read: each shape that
cannot work is one problem at `file:line key`, saying what to write instead, and
never quoting the URL (it may hold a password)."""

from __future__ import annotations

import pytest

from crmsync.config.loader import load_config_text
from crmsync.config.urls import sql_url_problem
from crmsync.errors import ConfigError

TEXT = """\
state: {state}
systems:
  erp:
    connector: sql
    url: {url}
    objects:
      customer: {{table: customers, key: customer_no}}
  crm:
    connector: tryton
    url: {tryton}
    database: crm
    password: x
    objects:
      company: {{}}
links:
  customers:
    source: erp.customer
    target: crm.company
    fields:
      - {{source: name, target: name}}
"""
GOOD = {"state": "sqlite:///crmsync.db", "url": "sqlite:///erp.db",
        "tryton": "http://127.0.0.1:8000"}


@pytest.mark.parametrize(
    ("key", "value", "where", "says"),
    [
        ("url", "erp.db", "c.yaml:5 systems.erp.url", "sqlite:///PATH"),
        ("url", "sqlite:/erp.db", "c.yaml:5 systems.erp.url", "sqlite:///relative/path.db"),
        ("url", "sqlite://erp.db", "c.yaml:5 systems.erp.url", "three slashes"),
        ("url", "''", "c.yaml:5 systems.erp.url", "the URL is empty"),
        ("url", "postgres://u:S3cretPw@db/erp", "c.yaml:5 systems.erp.url",
         "use postgresql+psycopg://"),
        ("url", "mariadb+nosuch://u:S3cretPw@db/erp", "c.yaml:5 systems.erp.url",
         "unknown database kind 'mariadb+nosuch://'"),
        ("url", "postgresql+psycopg://u:S3cretPw@db:port/erp", "c.yaml:5 systems.erp.url",
         "port in the database URL is not a number"),
        ("state", "crmsync.db", "c.yaml:1 state", "state database: not a database URL"),
        ("state", "postgres://u:S3cretPw@db/state", "c.yaml:1 state", "postgresql+psycopg://"),
        ("tryton", "localhost:8000", "c.yaml:10 systems.crm.url", "http://HOST:PORT"),
        ("tryton", "ftp://tryton.example", "c.yaml:10 systems.crm.url", "http://HOST:PORT"),
        ("tryton", "''", "c.yaml:10 systems.crm.url", "the URL is empty"),
    ],
)
def test_a_url_that_cannot_work_is_one_located_problem(
    key: str, value: str, where: str, says: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config_text(TEXT.format(**(GOOD | {key: value})), "c.yaml", env={})
    [(loc, msg)] = refused.value.problems
    assert loc == where
    assert says in msg
    assert "S3cretPw" not in msg


def test_good_urls_pass_and_drivers_are_checked_only_on_use() -> None:
    load_config_text(TEXT.format(**GOOD), "c.yaml", env={})
    for url in ("sqlite://", "'sqlite:///:memory:'", "sqlite:////abs/erp.db",
                "postgresql+psycopg://u:p@h:5432/d", "mysql+pymysql://root@h/d",
                "mysql://root@h/d"):  # mysqlclient may be installed where it runs
        load_config_text(TEXT.format(**(GOOD | {"url": url})), "c.yaml", env={})
    assert sql_url_problem("mysql://root@h/d") == (
        "the driver for 'mysql://' is not installed (MySQLdb); use mysql+pymysql://"
    )


def test_an_unset_variable_is_one_problem_not_two() -> None:
    with pytest.raises(ConfigError) as refused:
        load_config_text(TEXT.format(**(GOOD | {"url": "${ERP_URL}"})), "c.yaml", env={})
    [(loc, msg)] = refused.value.problems
    assert loc == "c.yaml:5 systems.erp.url" and "'ERP_URL' is not set" in msg
