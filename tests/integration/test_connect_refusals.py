"""A server that refuses the URL (unknown database, unknown user, wrong password) is
a config problem naming the key (`SettingError`, exit 2); a server that is not there
is an outage (`SystemUnavailable` / `StateUnavailable`, exit 3). On every database,
for a system and for the state, and never with the password in the message."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from dbs import MARIADB_ADMIN, PG_ADMIN, _unavailable

from crmsync.config.models import ObjectConfig
from crmsync.connectors.sql import SqlConnector
from crmsync.errors import SettingError, StateUnavailable, SystemUnavailable
from crmsync.state.store import StateStore

PASSWORD = "Wr0ngPassw0rd"
SERVERS = {
    "postgresql": ("postgresql+psycopg://{cred}@127.0.0.1:{port}/{db}", "postgres", 5432),
    "mariadb": ("mysql+pymysql://{cred}@127.0.0.1:{port}/{db}", "root", 3306),
}
# (case, credentials, database, port, what) with what: the exception and a phrase
REFUSED = [
    ("unknown database", "{user}", "crmsync_no_such_db", None, "does not exist"),
    ("unknown user", "crmsync_no_such_user", "test", None, None),
    ("down", "{user}", "test", 1, None),
]


@pytest.fixture(params=list(SERVERS))
def server(request: pytest.FixtureRequest) -> str:
    admin = PG_ADMIN if request.param == "postgresql" else MARIADB_ADMIN
    eng = sa.create_engine(admin)
    try:
        with eng.connect():
            pass
    except sa.exc.OperationalError as exc:
        _unavailable(request.param, exc)
    finally:
        eng.dispose()
    return str(request.param)


def _url(server: str, cred: str, db: str, port: int | None) -> str:
    template, user, default_port = SERVERS[server]
    return template.format(cred=cred.format(user=user), db=db, port=port or default_port)


@pytest.mark.parametrize(("case", "cred", "db", "port", "says"), REFUSED,
                         ids=[c[0] for c in REFUSED])
def test_system_and_state_refusals(
    server: str, case: str, cred: str, db: str, port: int | None, says: str | None
) -> None:
    url = _url(server, cred, db, port)
    conn = SqlConnector("crm", url, {"company": ObjectConfig(table="company", key="id")})
    with pytest.raises(SystemUnavailable) as sys_err:
        conn.describe("company")
    conn.close()
    state = StateStore(url)
    with pytest.raises((SettingError, StateUnavailable)) as state_err:
        state.migrate()
    state.close()
    if case == "down":
        assert not isinstance(sys_err.value, SettingError), sys_err.value
        assert "unreachable" in sys_err.value.user_message
        assert isinstance(state_err.value, StateUnavailable), state_err.value
        return
    assert isinstance(sys_err.value, SettingError), sys_err.value
    assert sys_err.value.key == "systems.crm.url"
    assert isinstance(state_err.value, SettingError), state_err.value
    assert state_err.value.key == "state"
    if says:
        assert says in sys_err.value.user_message and says in state_err.value.user_message


def test_wrong_password_mariadb_never_printed(server: str) -> None:
    if server != "mariadb":
        pytest.skip("PostgreSQL here trusts every local user: no password is checked")
    url = _url(server, f"root:{PASSWORD}", "test", None)
    conn = SqlConnector("crm", url, {"company": ObjectConfig(table="company", key="id")})
    with pytest.raises(SettingError) as refused:
        conn.describe("company")
    conn.close()
    assert "access denied" in refused.value.user_message
    assert PASSWORD not in str(refused.value)
    state = StateStore(url)
    with pytest.raises(SettingError) as refused:
        state.migrate()
    state.close()
    assert refused.value.key == "state" and PASSWORD not in str(refused.value)


def test_sqlite_missing_file_or_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a database\n" * 100)
    for name, says in (("missing.db", "does not exist"), ("notes.txt", "not a SQLite")):
        conn = SqlConnector("crm", f"sqlite:///{tmp_path / name}",
                            {"company": ObjectConfig(table="company", key="id")})
        with pytest.raises(SettingError) as refused:
            conn.describe("company")
        conn.close()
        assert refused.value.key == "systems.crm.url" and says in refused.value.user_message
    assert not (tmp_path / "missing.db").exists()
    state = StateStore(f"sqlite:///{tmp_path / 'notes.txt'}")
    with pytest.raises(SettingError) as refused:
        state.migrate()
    state.close()
    assert refused.value.key == "state"
