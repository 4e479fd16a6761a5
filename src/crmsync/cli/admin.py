"""Admin commands: `crmsync token create|list|revoke`, `retry`, `status`, `erase`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from crmsync.cli.common import ConfigOpt, err, load, out, refuse_if_invalid
from crmsync.config.secrets import redact
from crmsync.errors import UnknownLink

if TYPE_CHECKING:
    from crmsync.config.models import Config
    from crmsync.state.store import StateStore

token_app = typer.Typer(help="API tokens (admin or viewer).", no_args_is_help=True)

CLI_ACTOR = "cli"


@contextmanager
def _state(
    path: Path, *, link: str | None = None, readonly: bool = False, rules: bool = False
) -> Iterator[tuple[Config, StateStore]]:
    """The config and its state database. An unknown ``link`` is refused first (exit 2),
    so a mistyped command never creates a state file; ``readonly`` creates none at all."""
    from crmsync.engine.status import require_link

    config = load(path)  # a broken file: its problems, exit 2
    try:
        require_link(config, link, rules=rules)
    except UnknownLink as exc:
        raise _fail(exc.user_message, 2) from None
    from crmsync.state.store import StateStore

    state = StateStore(config.state, readonly=readonly)
    try:
        state.migrate()
        yield config, state
    finally:
        state.close()


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"error: {redact(message)}", markup=False, soft_wrap=True)
    return typer.Exit(code)


# -- tokens ---------------------------------------------------------------------
@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="admin or viewer")],
    name: Annotated[
        str | None, typer.Option(help="who or what uses it (default: generated)")
    ] = None,
    config: ConfigOpt = Path("crmsync.yaml"),
) -> None:
    """Make a token; it is printed once, alone on the last line. Only its hash is kept."""
    from crmsync.api.auth import ROLES, create_token, default_name

    if role not in ROLES:
        raise _fail(f"--role must be one of {', '.join(ROLES)}, got {role!r}", 2)
    name = name or default_name(role)
    with _state(config) as (_, state):
        try:
            token = create_token(state, role, name, actor=CLI_ACTOR)  # type: ignore[arg-type]
        except ValueError as exc:
            raise _fail(str(exc), 2) from None
    err.print("The token is shown only now; store it safely.", markup=False)
    out.print(f"created {role} token {name!r}:", markup=False)
    # Alone on the last line, nothing after it, so scripts can take it with tail -1.
    print(token, flush=True)


@token_app.command("list")
def token_list(config: ConfigOpt = Path("crmsync.yaml")) -> None:
    """Tokens in use: name, role, created (never the token or its hash)."""
    with _state(config) as (_, state):
        rows = state.list_tokens()
    if not rows:
        out.print("no tokens", markup=False)
        return
    t = Table()
    for col in ("name", "role", "created"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["role"], _when(r["created_at"]))
    out.print(t)


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="the token's name")],
    config: ConfigOpt = Path("crmsync.yaml"),
) -> None:
    """Revoke a token: requests with it are refused from now on."""
    from crmsync.api.auth import revoke_token

    with _state(config) as (_, state):
        n = revoke_token(state, name, actor=CLI_ACTOR)
    if not n:
        raise _fail(f"no active token named {name!r} (see: crmsync token list)", 2)
    out.print(f"revoked token {name}", markup=False)


# -- retry ------------------------------------------------------------------------
def retry(
    config: ConfigOpt = Path("crmsync.yaml"),
    link: Annotated[str | None, typer.Option("--link", help="only this link")] = None,
    message_id: Annotated[int | None, typer.Option("--id", help="only this message")] = None,
) -> None:
    """Put failed messages back in the queue with their attempts reset (a rule's: --link
    rule:NAME)."""
    from crmsync.state.store import utcnow
    with _state(config, link=link, rules=True) as (_, state):
        now = utcnow()
        with state.begin() as c:
            if message_id is not None:
                result = state.retry_message(c, message_id, now=now)
                if result == "missing":
                    raise _fail(f"no message {message_id}", 2)
                if result not in ("retried", "superseded"):
                    raise _fail(f"message {message_id} is {result}, not failed")
                n = 1
                state.add_audit(
                    c, CLI_ACTOR, "message.retry", f"message:{message_id}", {"result": result},
                    now=now,
                )
            else:
                n = state.retry_failed_messages(c, link=link, now=now)
                state.add_audit(
                    c, CLI_ACTOR, "messages.retry", f"link:{link}" if link else "all",
                    {"retried": n}, now=now,
                )
    out.print(f"{n} failed message(s) back in the queue", markup=False)


# -- status -----------------------------------------------------------------------
def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def _age(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "-"
    s = max(0, int((now - at).total_seconds()))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def _last_run(name: str, r: dict[str, Any] | None) -> str:
    if r is None:
        return f"{name}: never ran"
    counts = ", ".join(f"{k} {v}" for k, v in r["counts"].items() if v) or "no changes"
    when = _when(r["finished_at"] or r["started_at"])
    line = f"{name}: {r['kind']} {r['status']} at {when} — {counts}"
    return line + (f" — {redact(r['error'])}" if r.get("error") else "")


def status(
    config: ConfigOpt = Path("crmsync.yaml"),
    link: Annotated[str | None, typer.Option("--link", help="only this link")] = None,
) -> None:
    """Links, queue depth, oldest waiting message, last run; systems and quotas."""
    from crmsync.engine.quota import QuotaGuard
    from crmsync.engine.status import link_statuses
    from crmsync.state.store import utcnow

    # Read-only: looking never creates a state database (a mistyped `state:` path).
    with _state(config, link=link, readonly=True) as (cfg, state):
        guard = QuotaGuard(cfg, state, utcnow)
        links = link_statuses(cfg, state, guard, link)
        quotas = {q.system: q for q in guard.all()}
    now = utcnow()
    t = Table(title="links")
    t.add_column("link", no_wrap=True)
    t.add_column("enabled")
    t.add_column("schedule")
    for col in ("pending", "running", "failed"):
        t.add_column(col, justify="right")
    t.add_column("oldest waiting", justify="right")
    for st in links:
        queue = st.queue
        t.add_row(
            st.name,
            ("yes" if st.enabled else "no") + (" (switched)" if st.switched else "")
            + (", paused" if st.paused else "")
            + (", waiting for quota" if st.quota_wait else ""),
            cfg.links[st.name].schedule or "on demand",
            str(queue.get("pending", 0)),
            str(queue.get("running", 0)),
            str(queue.get("failed", 0)),
            _age(st.oldest_waiting_at, now),
        )
    out.print(t)
    if cfg.rules:
        out.print(_rules_status(cfg, config))
    for st in sorted(links, key=lambda st: st.name):
        if st.paused:
            n, why = st.paused
            out.print(f"paused: {st.name}: {n} message(s) wait, attempts unspent — {redact(why)}",
                      markup=False, soft_wrap=True)
    for st in sorted(links, key=lambda st: st.name):
        if st.quota_wait:
            n, until, system = st.quota_wait
            out.print(
                f"waiting for quota: {st.name}: {n} message(s) wait for {system} until "
                f"{_when(until)} UTC", markup=False, soft_wrap=True,
            )
    out.print("last run:", markup=False)
    for st in links:
        out.print("  " + _last_run(st.name, st.last_run), markup=False, soft_wrap=True)
    s = Table(title="systems")
    for col in ("system", "connector", "quota", "used", "remaining", "resets at (UTC)"):
        s.add_column(col)
    for name, sc in cfg.systems.items():
        q = quotas.get(name)
        if q is None:
            s.add_row(name, sc.connector, "-", "-", "-", "-")
        else:
            s.add_row(
                name, sc.connector,
                f"{q.calls}/{q.per}" + (f", {q.rate:g}/s" if q.rate else ""),
                str(q.used), str(q.remaining),
                q.resets_at.strftime("%Y-%m-%d %H:%M"),
            )
    out.print(s)


def _rules_status(cfg: Config, path: Path) -> Table:
    """Each rule: its switch, schedule, queue (evaluations and firings) and firings."""
    with _state(path, readonly=True) as (_, state):
        switches = state.link_states()
        with state.connect() as c:
            counts = state.queue_counts_by_link(c)
            fired = state.firing_counts(c)
    t = Table(title="rules")
    t.add_column("rule", no_wrap=True)
    t.add_column("on")
    t.add_column("enabled")
    t.add_column("schedule")
    for col in ("pending", "running", "failed", "fired"):
        t.add_column(col, justify="right")
    for name, rc in cfg.rules.items():
        q = f"rule:{name}"
        on = switches.get(q, {}).get("enabled")
        enabled = rc.enabled if on is None else bool(on)
        queue = counts.get(q, {})
        t.add_row(
            name, rc.on, ("yes" if enabled else "no") + (" (switched)" if on is not None else ""),
            rc.schedule or "with its links",
            *(str(queue.get(k, 0)) for k in ("pending", "running", "failed")),
            str(fired.get(name, 0)),
        )
    return t


# -- erase ------------------------------------------------------------------------
def erase(
    record: Annotated[str, typer.Argument(help="SYSTEM.OBJECT:ID, e.g. crm.person:42")],
    by: Annotated[
        str, typer.Option("--by", help="who asks (kept in the audit and the erased list)")
    ] = CLI_ACTOR,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
    config: ConfigOpt = Path("crmsync.yaml"),
) -> None:
    """GDPR erasure: anonymize the record and every record linked to it, in every system.

    Objects with `anonymize: {field: replacement}` get those values written; crmsync's
    own state keeps no personal value; the records are never synced again.
    Running it again is harmless. Exit 2 when the record exists nowhere (nothing is
    marked) or no linked object declares a usable `anonymize:`, 3 when a system is
    unreachable.
    """
    from crmsync.connectors import build_connectors
    from crmsync.engine.erase import EraseError, EraseRefused, RecordNotFound, refuse_missing
    from crmsync.engine.erase import erase as run_erase
    from crmsync.engine.graph import linked_records
    from crmsync.errors import UnknownRecordType
    from crmsync.model import RecordRef
    from crmsync.state.store import utcnow

    try:
        ref = RecordRef.parse(record)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    if not by.strip() or len(by) > 128:
        raise _fail("--by must be 1 to 128 characters", 2)
    # A refused password or a mistyped SQLite path is a config problem (exit 2), not
    # "unreachable, run again" (3); a system that is down is still tolerated here.
    refuse_if_invalid(config)
    with _state(config) as (cfg, state):
        try:
            group = linked_records(cfg, state, ref)
        except UnknownRecordType as exc:
            raise _fail(exc.user_message, 2) from None
        connectors = build_connectors(cfg, state)
        try:
            # Before asking: an id that exists nowhere is refused, nothing marked.
            refuse_missing(cfg, state, connectors, group, by)
            if not yes:
                out.print("these records will be anonymized and never synced again:",
                          markup=False)
                for r in group:
                    out.print(f"  {r}", markup=False)
                if not typer.confirm("erase them?", default=False, err=True):
                    raise _fail("nothing was erased", 1)
            report = run_erase(cfg, state, connectors, ref, by)
        except (RecordNotFound, EraseRefused) as exc:
            # An id that exists nowhere, or a config that allows no erasure (no or a bad
            # `anonymize:`): bad input, nothing changed.
            raise _fail(str(exc), 2) from None
        except EraseError as exc:
            raise _fail(str(exc), 3 if exc.unavailable else 1) from None
        finally:
            from crmsync.engine.quota import QuotaGuard, QuotaMeter

            # Erasure is never held back by a quota, but its calls count like any other.
            QuotaMeter(QuotaGuard(cfg, state, utcnow), connectors).settle()
            for conn in connectors.values():
                conn.close()
    t = Table(title=f"erased {ref} (by {report.by}, first at {_when(report.erased_at)} UTC)")
    for col in ("record", "result", "fields"):
        t.add_column(col)
    for r in report.records:
        t.add_row(str(r.ref), r.result, ", ".join(r.fields) or "-")
    out.print(t)
    scrubbed = ", ".join(f"{k} {v}" for k, v in report.scrubbed.items() if v) or "nothing"
    out.print(f"crmsync state scrubbed: {scrubbed}", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
    app.command()(retry)
    app.command()(status)
    app.command()(erase)
