"""The cadence job's systems for the rules tests: SQLite CRM and cadence databases,
a crmsync config with two rules, and a real webhook receiver on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook

from crmsync.config.loader import load_config
from crmsync.connectors import build_connectors
from crmsync.engine.retry import RetryPolicy
from crmsync.engine.runner import Engine
from crmsync.state.store import StateStore, utcnow

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

CONFIG = """\
state: {state}
systems:
  crm:
    connector: sql
    url: sqlite:///{d}/crm.db
    activities:
      {{table: activity, record: contact_id, subject: subject, body: body, at: created_at}}
    objects:
      contact:
        table: contact
        key: id
        updated_at: updated_at
        lookback: 0
        anonymize: {{name: Erased, email: erased@invalid.example}}
  cadence:
    connector: sql
    url: sqlite:///{d}/cadence.db
    objects:
      prospect: {{table: prospect, key: id, updated_at: updated_at, lookback: 0}}
links:
  prospects:
    source: crm.contact
    target: cadence.prospect
    match: {{email: email}}
    fields:
      - {{source: email, target: email}}
      - {{source: name, target: name}}
rules:
  exit_cadence:
    on: crm.contact
    when:
      all:
        - {{field: type, op: in, value: [Lead, Contact]}}
        - {{field: status, op: changed_to, value: Closed}}
        - any:
            - {{field: do_not_call, op: is_true}}
            - {{field: owner, op: changed}}
    then:
      - set: {{via: prospects, values: {{cadence: null, state: exited}}}}
      - activity: {{subject: "Removed from cadence", body: "{{status}} by {{owner}}"}}
      - sync: prospects
      - webhook: {{url: "{hook}", secret: "{secret}"}}
  call_outcome:
    on: cadence.prospect
    schedule: "*/5 * * * *"
    when: {{field: last_outcome, op: changed}}
    then:
      - activity: {{via: prospects, subject: "Call: {{last_outcome}}", body: "{{last_notes}}"}}
"""


class Receiver:
    """A real HTTP endpoint on loopback that answers with the statuses it is given."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                code = outer.statuses.pop(0) if outer.statuses else 204
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for headers, body in self.got:
            out.append({"id": headers["webhook-id"],
                        **Webhook(SECRET).verify(body, headers)})  # raises if unsigned
        return out


@pytest.fixture
def hook() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


class Cadence:
    def __init__(self, d: Path, hook: Receiver, state: str | None = None) -> None:
        self.d = d
        self.state_url = state or f"sqlite:///{d}/state.db"
        self.crm = sa.create_engine(f"sqlite:///{d}/crm.db")
        self.cad = sa.create_engine(f"sqlite:///{d}/cadence.db")
        with self.crm.begin() as c:
            c.exec_driver_sql(
                "CREATE TABLE contact (id INTEGER PRIMARY KEY, name TEXT, email TEXT, type TEXT,"
                " status TEXT, do_not_call BOOLEAN, owner TEXT, updated_at DATETIME)"
            )
            c.exec_driver_sql(
                "CREATE TABLE activity (id INTEGER PRIMARY KEY AUTOINCREMENT, contact_id INTEGER,"
                " subject TEXT, body TEXT, created_at DATETIME)"
            )
        with self.cad.begin() as c:
            c.exec_driver_sql(
                "CREATE TABLE prospect (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT,"
                " name TEXT, cadence TEXT DEFAULT 'onboarding', state TEXT DEFAULT 'active',"
                " last_outcome TEXT, last_notes TEXT, updated_at DATETIME)"
            )
        (d / "crmsync.yaml").write_text(CONFIG.format(d=d, hook=hook.url, secret=SECRET,
                                                              state=self.state_url))

    @staticmethod
    def _stamp() -> str:
        return utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")

    def contact(self, id_: int, **values: Any) -> None:
        values["updated_at"] = self._stamp()
        with self.crm.begin() as c:
            cols = ", ".join(values)
            marks = ", ".join(f":{k}" for k in values)
            sets = ", ".join(f"{k} = excluded.{k}" for k in values)
            c.execute(sa.text(f"INSERT INTO contact (id, {cols}) VALUES (:id, {marks})"
                              f" ON CONFLICT (id) DO UPDATE SET {sets}"), {"id": id_, **values})

    def prospect_set(self, email: str, **values: Any) -> None:
        values["updated_at"] = self._stamp()
        sets = ", ".join(f"{k} = :{k}" for k in values)
        with self.cad.begin() as c:
            c.execute(sa.text(f"UPDATE prospect SET {sets} WHERE email = :email"),
                      {"email": email, **values})

    def prospects(self) -> dict[str, tuple[Any, ...]]:
        with self.cad.connect() as c:
            return {r[0]: tuple(r[1:]) for r in c.exec_driver_sql(
                "SELECT email, name, cadence, state FROM prospect")}

    def activities(self) -> list[tuple[Any, ...]]:
        with self.crm.connect() as c:
            return [tuple(r) for r in c.exec_driver_sql(
                "SELECT contact_id, subject, body FROM activity ORDER BY id")]

    def sync(self, retry: RetryPolicy | None = None) -> dict[str, dict[str, int]]:
        config = load_config(self.d / "crmsync.yaml")
        state = StateStore(config.state)
        state.migrate()
        conns = build_connectors(config, state)
        try:
            reports = Engine(config, state, conns, retry=retry).sync()
            out: dict[str, dict[str, int]] = {}
            for r in reports:
                assert r.status == "ok", (r.link, r.error)
                for k, v in r.summary().items():
                    out.setdefault(r.link, {}).setdefault(k, 0)
                    out[r.link][k] += v
            return out
        finally:
            state.close()
            for c in conns.values():
                c.close()

    def state(self) -> sa.Engine:
        return sa.create_engine(self.state_url)
